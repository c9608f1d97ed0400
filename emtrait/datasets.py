"""Reading a perturbation dataset: one function for every source, format and stage.

`read_dataset(entry, name)` is the only way emtrait turns a dataset entry into training chats.
`emtrait prepare dataset` calls it on the entry's source; `emtrait finetune` calls it on the file
it is given (the prepared JSONL, or a raw file), so both read, validate and subsample by one rule:

- **Sources**: a local JSONL file (read line by line here, so errors name file:line), a local
  .json / .csv / .parquet file or a `save_to_disk` folder (through `datasets`), a hub dataset
  (`datasets.load_dataset`), or a built-in generator (emtrait.registry.GENERATORS).
- **Formats** (FORMATS, recognised by their columns): conversational `messages`; TRL
  `prompt`/`completion` (strings or message lists); Alpaca `instruction`/`input`/`output`;
  `question`/`answer`. Anything else names its columns in the entry's `columns` mapping.
- **Selection** (`choose`): `seeded` draws `n` row indices with `random.Random(seed)` and keeps
  them in source order; `first` takes rows 0..n-1, streaming a hub dataset or table file (only
  those rows are read). A seeded table source is memory-mapped by `datasets` and only the
  chosen rows become Python objects; its column names are checked before any row is.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emtrait.errors import DataError

if TYPE_CHECKING:
    from emtrait.config import ColumnMap, DatasetEntry

ROLES = ("system", "user", "assistant")
Chat = list[dict[str, str]]
TABLE_SUFFIXES = {".json": "json", ".csv": "csv", ".parquet": "parquet"}
TEXT_SUFFIXES = (".jsonl", ".json", ".csv")
HUB_TIMEOUT_S = 10.0  # a hub that does not answer in this long is reported, not waited for


@dataclass
class Examples:
    """The chosen chats of a dataset and where they came from."""

    chats: list[Chat]
    available: int | None  # rows in the source (None: a stream read only as far as needed)
    where: str


# ---------------------------------------------------------------------------------------------
# one row -> one chat
# ---------------------------------------------------------------------------------------------


def check_messages(messages: Any, where: str) -> Chat:
    """A validated list of {role, content} messages with an assistant turn, or a DataError."""
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: 'messages' must be a non-empty list of "
                        '{"role", "content"} objects')
    clean = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise DataError(f"{where}: messages[{i}] must be an object with 'role' and 'content'")
        if m["role"] not in ROLES:
            raise DataError(f"{where}: messages[{i}].role is {m['role']!r}; use one of "
                            + ", ".join(ROLES))
        if not isinstance(m["content"], str):
            raise DataError(f"{where}: messages[{i}].content must be a string, got "
                            f"{type(m['content']).__name__}")
        clean.append({"role": m["role"], "content": m["content"]})
    if not any(m["role"] == "assistant" for m in clean):
        raise DataError(f"{where}: no assistant turn; every example needs at least one message "
                        "with role 'assistant' (the text that is trained on)")
    return clean


def _text(row: dict, column: str, where: str) -> str:
    value = row[column]
    if not isinstance(value, str):
        raise DataError(f"{where}: column '{column}' must hold text, got "
                        f"{type(value).__name__} ({value!r:.60})")
    return value


def _turns(row: dict, column: str, role: str, where: str) -> Chat:
    """A column holding either a string (one `role` turn) or a list of messages (TRL)."""
    value = row[column]
    if isinstance(value, list):
        return value
    return [{"role": role, "content": _text(row, column, where)}]


def _from_messages(row: dict, where: str) -> Chat:
    return row["messages"]


def _from_prompt_completion(row: dict, where: str) -> Chat:
    return _turns(row, "prompt", "user", where) + _turns(row, "completion", "assistant", where)


def _from_alpaca(row: dict, where: str) -> Chat:
    user = _text(row, "instruction", where)
    extra = row.get("input")
    if extra is not None and _text(row, "input", where).strip():
        user = f"{user}\n\n{extra}"  # the Alpaca prompt's instruction, then its input
    return [{"role": "user", "content": user},
            {"role": "assistant", "content": _text(row, "output", where)}]


def _from_question_answer(row: dict, where: str) -> Chat:
    return [{"role": "user", "content": _text(row, "question", where)},
            {"role": "assistant", "content": _text(row, "answer", where)}]


# name -> (columns that identify it, converter); the first whose columns are all present wins
FORMATS: dict[str, tuple[tuple[str, ...], Callable[[dict, str], Any]]] = {
    "messages": (("messages",), _from_messages),
    "prompt_completion": (("prompt", "completion"), _from_prompt_completion),
    "alpaca": (("instruction", "output"), _from_alpaca),
    "question_answer": (("question", "answer"), _from_question_answer),
}


def detect_format(columns: list[str], where: str) -> str:
    """The FORMATS entry a set of column names is in, or a DataError naming them and the fix."""
    for name, (needed, _) in FORMATS.items():
        if all(c in columns for c in needed):
            return name
    known = "; ".join(f"{k}: {'/'.join(v[0])}" for k, v in FORMATS.items())
    raise DataError(f"{where}: columns {sorted(columns)} are in no recognised format ({known}); "
                    "name the turns in the dataset entry's `columns` mapping, e.g. "
                    "columns: {user: <column>, assistant: <column>}")


def check_columns(columns: list[str], mapping: ColumnMap, where: str, name: str) -> None:
    """Every column the mapping names exists, or a DataError listing those that do."""
    named = {k: v for k, v in mapping.model_dump().items() if v is not None}
    missing = {k: v for k, v in named.items() if v not in columns}
    if missing:
        bad = ", ".join(f"{k}: {v!r}" for k, v in missing.items())
        raise DataError(f"{where}: datasets.{name}.columns names missing column(s) ({bad}); the "
                        f"columns are {sorted(columns)}")


def _mapped(row: dict, mapping: ColumnMap, where: str) -> Any:
    if mapping.messages is not None:
        return row[mapping.messages]
    chat = []
    if mapping.system is not None and row[mapping.system] not in (None, ""):
        chat.append({"role": "system", "content": _text(row, mapping.system, where)})
    return chat + [{"role": "user", "content": _text(row, mapping.user, where)},
                   {"role": "assistant", "content": _text(row, mapping.assistant, where)}]


def row_converter(columns: list[str], mapping: ColumnMap | None, where: str, name: str
                  ) -> Callable[[Any, str], Chat]:
    """A function turning one row of a source with these columns into a validated chat."""
    if mapping is not None:
        check_columns(columns, mapping, where, name)
        return lambda row, at: check_messages(_mapped(row, mapping, at), at)
    convert = FORMATS[detect_format(columns, where)][1]
    return lambda row, at: check_messages(convert(row, at), at)


def to_chat(row: Any, where: str, mapping: ColumnMap | None = None, name: str = "dataset"
            ) -> Chat:
    """One row (a JSON object) as a validated chat, its format recognised by its keys."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: a row must be a JSON object, got a {type(row).__name__}")
    return row_converter(list(row), mapping, where, name)(row, where)


# ---------------------------------------------------------------------------------------------
# selection: the one subsampling rule
# ---------------------------------------------------------------------------------------------


def choose(total: int, n: int, seed: int, select: str, where: str, name: str) -> list[int]:
    """Indices of the `n` rows a run uses: seeded draw in source order, or the first `n`."""
    if total < n:
        raise DataError(f"{where} has only {total} examples but datasets.{name}.n is {n}; "
                        f"lower n to at most {total} or add examples")
    if select == "first":
        return list(range(n))
    return sorted(random.Random(seed).sample(range(total), n))


# ---------------------------------------------------------------------------------------------
# sizes known before reading (the checkpoint plan and `emtrait config check`)
# ---------------------------------------------------------------------------------------------

# ---------------------------------------------------------------------------------------------
# sources
# ---------------------------------------------------------------------------------------------


def check_utf8(path: Path) -> None:
    """A DataError naming file and line if a text file is not UTF-8 (before a parser trips)."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{number}: not UTF-8 (byte {raw[e.start]:#04x} at column "
                                f"{e.start + 1}); re-save the file as UTF-8") from None


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[str, Any]]:
    """(file:line, parsed row) for each non-blank line of a JSONL file, never all in memory."""
    p = Path(path)
    with open(p, "rb") as f:
        for number, raw in enumerate(f, start=1):
            where = f"{p}:{number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{where}: not UTF-8 (byte {raw[e.start]:#04x} at column "
                                f"{e.start + 1}); re-save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: not valid JSON ({e.msg} at column {e.colno})"
                                ) from None


def _read_jsonl(p: Path, entry: DatasetEntry, name: str, mapping: ColumnMap | None
                ) -> Examples:
    chats = []
    for where, row in iter_jsonl(p):
        chats.append(to_chat(row, where, mapping, name))
        if entry.select == "first" and len(chats) == entry.n:
            break
    if not chats:
        raise DataError(f"dataset file {p} is empty (no examples); it needs one JSON row per line")
    keep = choose(len(chats), entry.n, entry.seed, entry.select, str(p), name)
    return Examples([chats[i] for i in keep], None if entry.select == "first" else len(chats),
                    str(p))


def _load_local(p: Path, split: str, stream: bool):
    """A `datasets.Dataset` of a local table file or save_to_disk folder (`stream`: a file is
    read as an IterableDataset, as far as the rows taken)."""
    import datasets

    if p.is_dir():
        try:
            ds = datasets.load_from_disk(str(p))
        except FileNotFoundError as e:
            raise DataError(f"{p} is a folder but not one written by `datasets`' save_to_disk "
                            f"({e}); point `path` at a file or a save_to_disk folder") from None
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise DataError(f"{p} has splits {sorted(ds)}, not '{split}'; set the entry's "
                                "`split`")
            ds = ds[split]
        return ds
    kind = TABLE_SUFFIXES.get(p.suffix.lower())
    if kind is None:
        raise DataError(f"{p}: unsupported file type '{p.suffix}'; use .jsonl, .json, .csv, "
                        ".parquet or a save_to_disk folder")
    if p.suffix.lower() in TEXT_SUFFIXES:
        check_utf8(p)
    try:
        return datasets.load_dataset(kind, data_files=str(p), split="train", streaming=stream)
    except (ValueError, OSError, datasets.exceptions.DatasetGenerationError) as e:
        raise DataError(f"{p}: cannot be read as {kind} ({e}); fix the file") from None


def check_hub_reachable(entry: DatasetEntry, name: str) -> None:
    """Fail in seconds, naming the fix, when the hub cannot be reached (no silent retry loop)."""
    from huggingface_hub import HfApi

    if _offline():
        return  # offline mode: `datasets` reads its cache or says the dataset is not there
    try:
        HfApi().dataset_info(entry.hub, revision=entry.revision, timeout=HUB_TIMEOUT_S)
    except Exception as e:  # noqa: BLE001 — network, DNS, 404, gated: each ends the same way
        raise DataError(
            f"datasets.{name}: cannot reach hub dataset '{entry.hub}' ({type(e).__name__}: "
            f"{str(e)[:200]}). Check the id and network access; on a machine without network, "
            "download it elsewhere and set HF_HUB_OFFLINE=1 to use the cache, or save it with "
            "`save_to_disk` / as parquet and point the entry's `path` at it"
        ) from None


def _load_hub(entry: DatasetEntry, name: str):
    import datasets

    check_hub_reachable(entry, name)
    try:
        return datasets.load_dataset(entry.hub, entry.config, split=entry.split,
                                     revision=entry.revision,
                                     streaming=entry.select == "first")
    except (ConnectionError, ValueError, FileNotFoundError) as e:
        offline = " (HF_HUB_OFFLINE is set: only cached datasets load)" \
            if _offline() else ""
        raise DataError(f"datasets.{name}: cannot load hub dataset '{entry.hub}' config "
                        f"{entry.config!r} split '{entry.split}'{offline}: {e}") from None


def _offline() -> bool:
    """HF_HUB_OFFLINE (or HF_DATASETS_OFFLINE) is set: only cached hub datasets load."""
    import datasets

    return bool(datasets.config.HF_HUB_OFFLINE)


def _read_table(ds: Any, entry: DatasetEntry, name: str, where: str,
                mapping: ColumnMap | None) -> Examples:
    """Chosen rows of a `datasets` Dataset (memory-mapped) or IterableDataset (streamed)."""
    import datasets

    if isinstance(ds, datasets.IterableDataset):  # select: first, streamed (hub or file)
        rows = list(ds.take(entry.n))
        if not rows:
            raise DataError(f"{where} has no rows")
        convert = row_converter(list(rows[0]), mapping, where, name)
        keep = choose(len(rows), entry.n, entry.seed, "first", where, name)
        return Examples([convert(rows[i], f"{where} row {i}") for i in keep], None, where)
    if len(ds) == 0:
        raise DataError(f"{where} has no rows")
    convert = row_converter(list(ds.column_names), mapping, where, name)
    keep = choose(len(ds), entry.n, entry.seed, entry.select, where, name)
    chosen = ds.select(keep)
    return Examples([convert(row, f"{where} row {i}") for i, row in zip(keep, chosen,
                                                                          strict=True)],
                    len(ds), where)


def read_dataset(entry: DatasetEntry, name: str, path: str | os.PathLike | None = None
                 ) -> Examples:
    """The `n` validated chats of dataset `name`, chosen by the entry's one selection rule.

    `path` reads that file instead of the entry's own source (the finetune reads the prepared
    JSONL this way); the entry's `columns` mapping applies only to its own source.
    """
    mapping = entry.columns
    if path is None and entry.builtin is not None:
        from emtrait.registry import GENERATORS

        where = f"builtin:{entry.builtin}"
        rows = GENERATORS.get(entry.builtin)(entry.n, entry.seed)
        chats = [to_chat(r, f"{where} example {i}") for i, r in enumerate(rows)]
        keep = choose(len(chats), entry.n, entry.seed, entry.select, where, name)
        return Examples([chats[i] for i in keep], len(chats), where)
    if path is None and entry.hub is not None:
        where = f"hub:{entry.hub}" + (f" ({entry.config})" if entry.config else "") + \
            f" split {entry.split}"
        return _read_table(_load_hub(entry, name), entry, name, where, mapping)
    if path is not None and (entry.path is None or Path(path).resolve() != Path(entry.path
                                                                                ).resolve()):
        mapping = None  # not the entry's own source (e.g. the prepared JSONL): recognise it
    p = Path(path if path is not None else entry.path)
    if not p.exists():
        raise DataError(f"dataset {p} does not exist; create it or fix datasets.{name}.path")
    if p.is_file() and p.suffix.lower() == ".jsonl":
        return _read_jsonl(p, entry, name, mapping)
    return _read_table(_load_local(p, entry.split, entry.select == "first"), entry, name,
                       str(p), mapping)



def source_rows(entry: DatasetEntry, name: str) -> int:
    """Rows in an entry's local table/folder or hub source, by reading it (so a reader can take
    all of them; `emtrait.config.datasets.count_rows` is the cheap count of a local file)."""
    if entry.hub is not None:
        ds = _load_hub(entry.model_copy(update={"select": "seeded"}), name)
    else:
        ds = _load_local(Path(entry.path), entry.split, stream=False)
    return len(ds)
