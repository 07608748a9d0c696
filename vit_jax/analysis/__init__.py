"""Looking inside a model as the paper does (Section 4.5, Appendix D.7).

  measures       attention rollout, attention distance, position-embedding
                 similarity, embedding filters
  plots          their figures (matplotlib)
"""
