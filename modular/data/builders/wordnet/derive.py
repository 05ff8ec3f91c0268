"""Derives the WordNet classification tasks from the WordNet 3.0 database files.

  python -m modular.data.builders.wordnet.derive [--wordnet /usr/share/wordnet] [--out DIR]

reads ``data.noun``, ``data.verb``, ``data.adj`` and ``data.adv`` (the Debian
package ``wordnet-base`` installs them under ``/usr/share/wordnet``) and writes
the shipped dataset next to this file (``data/``): ``wordnet_tasks.jsonl.gz``
(one example per line) and ``tasks.json`` (label names, sizes, seed). The
builder (``wordnet_tasks.py``) reads only these files, so nothing at run time
needs the system package.

Tasks (every row: ``text``, ``text_pair`` ("" for single texts), ``label``):

  def_supersense      definition -> lexicographer file of a noun or verb synset
                      (41 supersenses: noun.Tops .. verb.weather)
  def_pos             definition -> part of speech (noun, verb, adjective, adverb),
                      balanced over the four
  example_supersense  (lemma, usage example) -> supersense, same 41 labels as
                      def_supersense: the two share the supersense sub-skill
  relation            (word, word) -> synonym | hypernym | antonym | unrelated,
                      balanced; hypernym means the second word names a hypernym
                      synset of the first

Splits are held out by meaning: every synset is assigned to train or test by a
seeded hash of its offset, once for all tasks, so a synset whose definition is a
test example never gives a train example to another task either. A word pair
belongs to the split of both its synsets (pairs that straddle are dropped), with
one direction kept for the symmetric relations. Within a split, examples are
drawn with ``numpy.random.default_rng([seed, crc32(task), split])`` from pools
sorted by synset, so the output is a pure function of the database and the seed.

References: Miller, 1995, "WordNet: a lexical database for English"; supersense
tagging as in Ciaramita and Johnson, 2003, "Supersense tagging of unknown nouns
in WordNet". The lexicographer file numbers are those of ``lexnames(5WN)``.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import io
import json
import os
import re
import zlib
from typing import Iterable

import numpy as np

# lexnames(5WN): lexicographer file number -> name (0..44).
LEXNAMES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal",
    "noun.artifact", "noun.attribute", "noun.body", "noun.cognition", "noun.communication",
    "noun.event", "noun.feeling", "noun.food", "noun.group", "noun.location", "noun.motive",
    "noun.object", "noun.person", "noun.phenomenon", "noun.plant", "noun.possession",
    "noun.process", "noun.quantity", "noun.relation", "noun.shape", "noun.state",
    "noun.substance", "noun.time", "verb.body", "verb.change", "verb.cognition",
    "verb.communication", "verb.competition", "verb.consumption", "verb.contact",
    "verb.creation", "verb.emotion", "verb.motion", "verb.perception", "verb.possession",
    "verb.social", "verb.stative", "verb.weather", "adj.ppl",
)
SUPERSENSES = LEXNAMES[3:44]  # noun.Tops .. verb.weather: 41 labels
POS_NAMES = ("noun", "verb", "adjective", "adverb")
RELATIONS = ("synonym", "hypernym", "antonym", "unrelated")
_FILES = {"n": "data.noun", "v": "data.verb", "a": "data.adj", "r": "data.adv"}
_POS_LABEL = {"n": 0, "v": 1, "a": 2, "s": 2, "r": 3}
_MARKER = re.compile(r"\((a|p|ip)\)$")  # adjective syntactic markers: big(a)

DEFAULT_SIZES = {"train": 3000, "test": 500}
TASKS = ("def_supersense", "def_pos", "example_supersense", "relation")
DEFAULT_TEST_FRACTION = 0.2


@dataclasses.dataclass(frozen=True)
class Synset:
  """One parsed line of a ``data.*`` file.

  Attributes:
    key: ``"<pos>:<offset>"`` with pos in n, v, a, r (satellites keep the file's "a").
    pos: the line's ss_type: n, v, a, s or r.
    lexfile: lexicographer file number (index into ``LEXNAMES``).
    lemmas: words with spaces for underscores, adjective markers removed.
    pointers: ``(symbol, target key, source word index, target word index)``;
      word indices count from 1, 0 means the whole synset (a semantic pointer).
    definition: the gloss without its quoted examples.
    examples: the quoted usage examples of the gloss.
  """
  key: str
  pos: str
  lexfile: int
  lemmas: tuple[str, ...]
  pointers: tuple[tuple[str, str, int, int], ...]
  definition: str
  examples: tuple[str, ...]


def parse_line(line: str, file_pos: str) -> Synset:
  """Parses one synset line of ``data.<pos>`` (format: wndb(5WN)).

  Args:
    line: ``offset lex_filenum ss_type w_cnt word lex_id ... p_cnt ptr... | gloss``.
    file_pos: n, v, a or r, the file the line comes from.

  Returns:
    The parsed ``Synset``.
  """
  head, _, gloss = line.partition(" | ")
  fields = head.split()
  offset, lexfile, ss_type = fields[0], int(fields[1]), fields[2]
  n_words = int(fields[3], 16)
  lemmas = tuple(_MARKER.sub("", fields[4 + 2 * i]).replace("_", " ")
                 for i in range(n_words))
  at = 4 + 2 * n_words
  n_ptrs = int(fields[at])
  pointers = []
  for i in range(n_ptrs):
    symbol, target, tpos, st = fields[at + 1 + 4 * i: at + 5 + 4 * i]
    tpos = "a" if tpos == "s" else tpos
    pointers.append((symbol, f"{tpos}:{target}", int(st[:2], 16), int(st[2:], 16)))
  examples = tuple(e.strip() for e in re.findall(r'"([^"]+)"', gloss) if e.strip())
  definition = gloss.split('"')[0].strip().rstrip(";").strip()
  return Synset(f"{file_pos}:{offset}", ss_type, lexfile, lemmas, tuple(pointers),
                definition, examples)


def read_wordnet(root: str) -> dict[str, Synset]:
  """Reads every synset of the four ``data.*`` files under ``root``.

  Args:
    root: the WordNet ``dict`` folder (``/usr/share/wordnet`` on Debian).

  Returns:
    ``{key: Synset}`` over nouns, verbs, adjectives (with satellites) and adverbs.

  Raises:
    FileNotFoundError: naming the missing file and the package that installs it.
  """
  synsets = {}
  for pos, name in _FILES.items():
    path = os.path.join(root, name)
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path}: missing; install WordNet 3.0 (Debian: "
                              f"apt-get install wordnet-base) or pass --wordnet DIR")
    with open(path, encoding="utf-8") as f:
      for line in f:
        if not line.startswith("  "):  # the licence header lines start with two spaces
          s = parse_line(line.rstrip("\n"), pos)
          synsets[s.key] = s
  return synsets


def synset_split(key: str, seed: int, test_fraction: float) -> str:
  """"test" for a seeded-hash fraction of synsets, else "train" (stable across runs)."""
  return "test" if zlib.crc32(f"{seed}:{key}".encode()) % 10_000 < test_fraction * 10_000 \
      else "train"


def _rng(seed: int, task: str, split: str) -> np.random.Generator:
  return np.random.default_rng([seed, zlib.crc32(task.encode()), zlib.crc32(split.encode())])


def _draw(rng: np.random.Generator, pool: list, n: int) -> list:
  """``n`` items of ``pool`` without replacement (all of them if fewer), in drawn order."""
  idx = rng.permutation(len(pool))[:n]
  return [pool[i] for i in idx]


def _row(text: str, label: int, source: str, text_pair: str = "") -> dict:
  return {"text": text, "text_pair": text_pair, "label": int(label), "source": source}


def _supersense(s: Synset) -> int:
  return SUPERSENSES.index(LEXNAMES[s.lexfile])


def def_supersense(pool: list[Synset], rng: np.random.Generator, n: int) -> list[dict]:
  """Definition -> supersense over noun and verb synsets, drawn uniformly."""
  pool = [s for s in pool if s.pos in "nv" and s.definition]
  return [_row(s.definition, _supersense(s), s.key) for s in _draw(rng, pool, n)]


def def_pos(pool: list[Synset], rng: np.random.Generator, n: int) -> list[dict]:
  """Definition -> part of speech, ``n // 4`` (+ remainder to the first) per class."""
  rows = []
  for label in range(len(POS_NAMES)):
    sub = [s for s in pool if _POS_LABEL[s.pos] == label and s.definition]
    k = n // len(POS_NAMES) + (1 if label < n % len(POS_NAMES) else 0)
    rows += [_row(s.definition, label, s.key) for s in _draw(rng, sub, k)]
  return [rows[i] for i in rng.permutation(len(rows))]


def example_supersense(pool: list[Synset], rng: np.random.Generator, n: int) -> list[dict]:
  """(lemma, usage example) -> supersense over noun and verb synsets with examples.

  The lemma is the first of the synset's lemmas that occurs in the example
  (case-insensitive), else its first lemma; the first example is used.
  """
  pool = [s for s in pool if s.pos in "nv" and s.examples]
  rows = []
  for s in _draw(rng, pool, n):
    example = s.examples[0]
    lemma = next((w for w in s.lemmas if w.lower() in example.lower()), s.lemmas[0])
    rows.append(_row(lemma, _supersense(s), s.key, text_pair=example))
  return rows


def _relation_pairs(synsets: dict[str, Synset], split_of: dict[str, str]
                    ) -> dict[tuple[str, int], list[tuple[str, str, str]]]:
  """Candidate (word, word, source) pairs of the three linked relations, per split.

  A pair is kept in the pool of the split both its synsets share; synonym and
  antonym pairs are kept in one direction only, hypernym pairs as (hyponym,
  hypernym). Returns ``{(split, label): [pairs]}`` in synset order.
  """
  pools: dict = {}
  seen = set()

  def add(split, label, a, b, source):
    a_low, b_low = a.lower(), b.lower()
    pair = (label, a_low, b_low) if label == 1 else (label, *sorted((a_low, b_low)))
    if a_low != b_low and pair not in seen:
      seen.add(pair)
      pools.setdefault((split, label), []).append((a, b, source))

  for key in sorted(synsets):
    s = synsets[key]
    split = split_of[key]
    for i, a in enumerate(s.lemmas):
      for b in s.lemmas[i + 1:]:
        add(split, 0, a, b, key)
    for symbol, target, src, dst in s.pointers:
      if target not in synsets or split_of[target] != split:
        continue
      t = synsets[target]
      if symbol == "@":
        add(split, 1, s.lemmas[0], t.lemmas[0], f"{key}>{target}")
      elif symbol == "!" and src and dst:
        add(split, 2, s.lemmas[src - 1], t.lemmas[dst - 1], f"{key}!{target}")
  return pools


@dataclasses.dataclass(frozen=True)
class _Index:
  """What the task functions share: synsets, their split, per-split pools."""
  synsets: dict[str, Synset]
  split_of: dict[str, str]
  by_split: dict[str, list[Synset]]  # split -> synsets in key order
  pairs: dict[tuple[str, int], list[tuple[str, str, str]]]
  linked: frozenset  # (key, key) joined by any pointer, both directions


def _index(synsets: dict[str, Synset], seed: int, test_fraction: float) -> _Index:
  keys = sorted(synsets)
  split_of = {key: synset_split(key, seed, test_fraction) for key in keys}
  by_split = {split: [synsets[k] for k in keys if split_of[k] == split]
              for split in ("train", "test")}
  linked = set()
  for key in keys:
    for _, target, _, _ in synsets[key].pointers:
      linked.update(((key, target), (target, key)))
  return _Index(synsets, split_of, by_split, _relation_pairs(synsets, split_of),
                frozenset(linked))


def relation(index: _Index, split: str, rng: np.random.Generator, n: int) -> list[dict]:
  """Word pair -> relation, ``n // 4`` per class (see module docstring).

  Unrelated pairs join the first lemmas of two synsets of the same part of speech
  in this split that are not linked by any pointer; their parts of speech follow
  the mixture of the other three classes, so the part of speech alone does not
  give the label away.
  """
  k = n // len(RELATIONS)
  rows, related_pos = [], []
  for label in range(3):
    for a, b, source in _draw(rng, index.pairs.get((split, label), []), k):
      rows.append(_row(a, label, source, text_pair=b))
      related_pos.append(source[0])  # the pos letter of the first synset key
  by_pos = {p: [s for s in index.by_split[split] if s.key[0] == p] for p in "nvar"}
  for p in (related_pos[i] for i in rng.choice(len(related_pos), n - len(rows))):
    while True:
      a, b = (by_pos[p][i] for i in rng.integers(len(by_pos[p]), size=2))
      if a.key != b.key and (a.key, b.key) not in index.linked \
          and a.lemmas[0].lower() != b.lemmas[0].lower():
        break
    rows.append(_row(a.lemmas[0], 3, f"{a.key}~{b.key}", text_pair=b.lemmas[0]))
  return [rows[i] for i in rng.permutation(len(rows))]


def derive(root: str, *, seed: int = 0, sizes: dict[str, int] | None = None,
           test_fraction: float = DEFAULT_TEST_FRACTION) -> tuple[list[dict], dict]:
  """All tasks' examples and their metadata.

  Args:
    root: the WordNet database folder.
    seed: seeds the synset split and every draw.
    sizes: examples per split, ``{"train": n, "test": n}`` (the same for every task).
    test_fraction: fraction of synsets held out for the test split.

  Returns:
    ``(rows, meta)``: rows with ``task``, ``split``, ``text``, ``text_pair``,
    ``label``, ``source`` (the synset key or keys), in task then split order; meta
    with per-task ``labels``, ``pair`` and ``description``, the sizes and seed.
  """
  sizes = dict(DEFAULT_SIZES, **(sizes or {}))
  index = _index(read_wordnet(root), seed, test_fraction)
  by_definition = {"def_supersense": def_supersense, "def_pos": def_pos,
                   "example_supersense": example_supersense}
  rows = []
  for task in TASKS:
    for split in ("train", "test"):
      rng = _rng(seed, task, split)
      if task == "relation":
        out = relation(index, split, rng, sizes[split])
      else:
        out = by_definition[task](index.by_split[split], rng, sizes[split])
      rows += [{"task": task, "split": split, **r} for r in out]
  meta = {
      "source": "WordNet 3.0 (Princeton University), data.noun/verb/adj/adv",
      "seed": seed, "test_fraction": test_fraction, "sizes": sizes,
      "tasks": {
          "def_supersense": {"labels": list(SUPERSENSES), "pair": False,
                             "description": "definition -> supersense (noun/verb lexicographer file)"},
          "def_pos": {"labels": list(POS_NAMES), "pair": False,
                      "description": "definition -> part of speech (balanced)"},
          "example_supersense": {"labels": list(SUPERSENSES), "pair": True,
                                 "description": "(lemma, usage example) -> supersense"},
          "relation": {"labels": list(RELATIONS), "pair": True,
                       "description": "(word, word) -> lexical relation (balanced)"},
      },
  }
  return rows, meta


def write(rows: Iterable[dict], meta: dict, out_dir: str) -> None:
  """Writes ``wordnet_tasks.jsonl.gz`` (byte-reproducible: gzip mtime 0) and ``tasks.json``."""
  os.makedirs(out_dir, exist_ok=True)
  buf = io.BytesIO()
  with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, compresslevel=9) as f:
    for r in rows:
      f.write((json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8"))
  with open(os.path.join(out_dir, "wordnet_tasks.jsonl.gz"), "wb") as f:
    f.write(buf.getvalue())
  with open(os.path.join(out_dir, "tasks.json"), "w") as f:
    json.dump(meta, f, indent=1, sort_keys=True)
    f.write("\n")


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--wordnet", default="/usr/share/wordnet", help="WordNet dict folder")
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "data"))
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--train", type=int, default=DEFAULT_SIZES["train"])
  parser.add_argument("--test", type=int, default=DEFAULT_SIZES["test"])
  args = parser.parse_args(argv)
  rows, meta = derive(args.wordnet, seed=args.seed,
                      sizes={"train": args.train, "test": args.test})
  write(rows, meta, args.out)
  print(f"wrote {len(rows)} examples of {len(TASKS)} tasks to {args.out}")


if __name__ == "__main__":
  main()
