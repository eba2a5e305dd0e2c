"""LM Studio's models folder: `PUBLISHER/REPO/FILE.gguf`, the Hub's own naming kept.

The folder is `~/.lmstudio/models` by default (LM Studio's docs, "Import Models"); a user who
moved it has the new place in `~/.lmstudio/settings.json` as `downloadsFolder`; an install
that predates `~/.lmstudio` keeps `~/.cache/lm-studio/models`, and `~/.lmstudio-home-pointer`
names the home LM Studio uses where it was redirected. (The last three are what LM Studio
writes on disk, as read by tools that integrate with it; its docs do not spell them out.)
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import OssConvertError
from ..files.gguf import gguf_models
from .similar import hint


def model_dirs() -> list[Path]:
    """LM Studio's models folders on this machine, the one its settings name first."""
    home = Path.home()
    homes = [home / ".lmstudio"]
    pointer = home / ".lmstudio-home-pointer"
    try:
        if pointer.is_file():
            homes.insert(0, Path(pointer.read_text(encoding="utf-8").strip()).expanduser())
    except (OSError, UnicodeDecodeError):
        pass
    dirs = []
    for folder in homes:
        try:
            settings = json.loads((folder / "settings.json").read_text(encoding="utf-8"))
            moved = settings.get("downloadsFolder") if isinstance(settings, dict) else None
            if isinstance(moved, str) and moved:
                dirs.append(Path(moved).expanduser())
        except (OSError, UnicodeDecodeError, ValueError):
            pass
        dirs.append(folder / "models")
    dirs.append(home / ".cache" / "lm-studio" / "models")
    unique: list[Path] = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


def install_dir() -> Path:
    """Where a new model goes: the first folder LM Studio would list."""
    existing = [d for d in model_dirs() if d.is_dir()]
    return existing[0] if existing else model_dirs()[0]


def repo_models(folder: Path) -> list[Path]:
    """The GGUF models of a repo folder, a split model once (by its first part)."""
    return [folder / name for name in gguf_models(p.name for p in folder.glob("*.gguf") if p.is_file())]


def list_models() -> list[tuple[str, Path]]:
    """(`PUBLISHER/REPO/FILE`, path) of every GGUF model in every folder."""
    found = []
    for root in model_dirs():
        if not root.is_dir():
            continue
        for repo in sorted(p for p in root.glob("*/*") if p.is_dir()):
            for model in repo_models(repo):
                found.append((f"{repo.parent.name}/{repo.name}/{model.name}", model))
    return found


def resolve(text: str) -> Path:
    """The GGUF of `lmstudio:PUBLISHER/REPO[/FILE.gguf]`."""
    parts = text.strip("/").split("/")
    if len(parts) not in (2, 3) or any(p in ("", ".", "..") for p in parts):
        raise OssConvertError(f"lmstudio:{text}: not an LM Studio model name (PUBLISHER/REPO[/FILE.gguf])")
    searched = []
    for root in model_dirs():
        repo = root / parts[0] / parts[1]
        searched.append(str(root))
        if not repo.is_dir():
            continue
        models = repo_models(repo)
        if len(parts) == 3:
            if not (repo / parts[2]).is_file():
                raise OssConvertError(f"lmstudio:{text}: {repo} has no file {parts[2]}"
                                      + (f" (it holds {', '.join(m.name for m in models[:5])})" if models else ""))
            return repo / parts[2]
        if not models:
            raise OssConvertError(f"lmstudio:{text}: {repo} holds no GGUF file")
        if len(models) > 1:
            raise OssConvertError(f"lmstudio:{text}: {repo} holds {len(models)} GGUF models; name one as "
                                  f"lmstudio:{parts[0]}/{parts[1]}/FILE.gguf ({', '.join(m.name for m in models[:5])})")
        return models[0]
    raise OssConvertError(f"lmstudio:{text}: no such model in LM Studio's folders (searched "
                          f"{', '.join(searched)})" + hint(text, [name for name, _ in list_models()]))
