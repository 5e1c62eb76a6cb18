"""Where a dataset's raw input is: one file (split 8:1:1 by seed) or pre-split train/valid/test files.

A directory is pre-split when it holds files named for the splits: a name part (between ``.``, ``-``
or ``_``) ``train``; ``valid``, ``validation``, ``val`` or ``dev``; ``test`` — e.g. ``train.csv,
valid.csv, test.csv`` (BARS / FuxiCTR) or ``frappe.train.libfm, frappe.validation.libfm,
frappe.test.libfm`` (the AFM authors' files).
"""
from __future__ import annotations

import os
import re

SPLIT_WORDS = {"train": ("train",), "valid": ("valid", "validation", "val", "dev"), "test": ("test",)}


def split_files(directory: str) -> dict[str, str] | None:
    """``{"train": path, "valid": path, "test": path}`` of a pre-split directory, ``None`` when no file
    in it is named for a split; ``ValueError`` when a split has no file or several."""
    names = sorted(n for n in os.listdir(directory)
                   if not n.startswith(".") and os.path.isfile(os.path.join(directory, n)))
    found = {split: [n for n in names if set(re.split(r"[._-]", n.lower())) & set(words)]
             for split, words in SPLIT_WORDS.items()}
    if not any(found.values()):
        return None
    wrong = [f"{split}: {', '.join(files) or 'none'}" for split, files in found.items() if len(files) != 1]
    if wrong:
        raise ValueError(f"{directory}: expected one train, one valid and one test file, found " + "; ".join(wrong))
    return {split: os.path.join(directory, files[0]) for split, files in found.items()}


def resolve_inputs(name: str, path: str | None, train_path: str | None, valid_path: str | None,
                   test_path: str | None, directories: bool = False) -> str | dict[str, str]:
    """The input of dataset ``name``: ``path`` (a file, or a directory when the reader takes one,
    ``directories``) or the three split paths (given, or found in the directory ``path``)."""
    given = {"train": train_path, "valid": valid_path, "test": test_path}
    if any(given.values()):
        if path:
            raise ValueError("give either a data path or train/valid/test paths, not both")
        missing = [split for split, p in given.items() if not p]
        if missing:
            raise ValueError(f"pre-split input needs train, valid and test paths; missing {', '.join(missing)}")
        return given
    if not path:
        raise ValueError(f"dataset {name!r} needs a data path (--data-path) or train/valid/test paths")
    if os.path.isdir(path):
        files = split_files(path)
        if files:
            return files
        if not directories:
            raise ValueError(f"{path} is a directory without train/valid/test files (e.g. train.csv, valid.csv, "
                             f"test.csv or *.train.libfm, *.validation.libfm, *.test.libfm)")
    return path
