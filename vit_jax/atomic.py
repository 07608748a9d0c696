"""Files written whole or not at all: a temporary file beside the target,
then a rename, so a crash or a full disk mid-write leaves the old file (or
none), never half of one."""

from etils import epath


def temporary_path(path) -> epath.Path:
  """Where `write_*` stage `path`: a hidden file in the same directory."""
  path = epath.Path(path)
  return path.parent / f'.{path.name}.tmp'


def write_bytes(path, data: bytes) -> None:
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  temporary = temporary_path(path)
  temporary.write_bytes(data)
  temporary.replace(path)


def write_text(path, text: str) -> None:
  write_bytes(path, text.encode('utf-8'))
