"""The token cache: a table's batches are the tokenizer's batches; Arrow files keyed by the texts,
the vocabulary and max_length, read back without tokenizing, made again when damaged or stale; a
second stage or run of the pipeline reads them."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minitinybert.distill import main
from minitinybert.data.tasks import DataError, Examples, get_task
from minitinybert.engine.teacher import resolve_teacher
from minitinybert.data.tokenizer import Tokenizer
from minitinybert.data.token_cache import examples_dataset, token_table, tokenize_in_memory
from tests.test_distill import cli, world  # noqa: F401  (the tiny world, a fixture)

WORDS = ["the", "film", "was", "un", "##believably", "good", "!", "naïve", "café", "[MASK]", "émigré", "x" * 30,
         "don't", "\"quoted\"", "42", "日本"]


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_dir(resolve_teacher(None, log=lambda *a: None))


texts = st.lists(st.sampled_from(WORDS), min_size=0, max_size=40).map(" ".join)


@given(rows=st.lists(st.tuples(texts, texts), min_size=1, max_size=12), pairs=st.booleans(),
       max_length=st.integers(4, 40), data=st.data())
def test_a_tables_batches_are_the_tokenizers(tok, rows, pairs, max_length, data):
    """Any rows of the table, padded, are `encode` of their texts: ids, token types and mask, with
    truncation (pairs: longest first) and empty texts; its lengths are the mask's row sums."""
    task = get_task("rte" if pairs else "sst2")
    examples = Examples([a for a, _ in rows], [b for _, b in rows] if pairs else None, np.zeros(len(rows)), task)
    table = tokenize_in_memory(examples, tok, max_length)
    index = data.draw(st.lists(st.integers(0, len(rows) - 1), min_size=1, max_size=8))
    got = table.batch(index)
    want = tok.encode([examples.texts[i] for i in index], [examples.pairs[i] for i in index] if pairs else None,
                      max_length=max_length)
    for name in ("input_ids", "token_type_ids", "attention_mask"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
        assert getattr(got, name).dtype == np.int32
    np.testing.assert_array_equal(table.lengths[index], want.attention_mask.sum(1))


def sst2_like(n=40, seed=0):
    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(WORDS, int(rng.integers(1, 30)))) for _ in range(n)]
    return Examples(texts, None, rng.integers(0, 2, n), get_task("sst2"))


def same(a, b):
    return (np.array_equal(a.ids, b.ids) and np.array_equal(a.type_ids, b.type_ids)
            and np.array_equal(a.offsets, b.offsets))


def test_the_cache_is_read_back_without_tokenizing(tok, tmp_path, monkeypatch):
    examples = sst2_like()
    said = []
    first = token_table(examples, tok, 16, tmp_path, log=said.append)
    assert same(first, tokenize_in_memory(examples, tok, 16))
    files = sorted(tmp_path.glob("*.arrow"))
    assert len(files) == 1 and files[0].name.startswith("sst2-40x16-") and "tokenizing 40 examples" in said[-1]

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("tokenized again")
    monkeypatch.setattr(tok, "encode_rows", no_tokenizing)
    again = token_table(examples, tok, 16, tmp_path, log=said.append)
    assert same(again, first) and said[-1].startswith("[data] token ids of 40 examples (sst2, max length 16) read")
    monkeypatch.undo()
    # the key: another max length, a changed text, another vocabulary's case setting each make their own file
    token_table(examples, tok, 17, tmp_path)
    changed = Examples(["a good film"] + examples.texts[1:], None, examples.labels, examples.task)
    assert not same(token_table(changed, tok, 16, tmp_path), first)
    cased = Tokenizer(tok.vocab, lowercase=False)
    token_table(examples, cased, 16, tmp_path)
    assert len(list(tmp_path.glob("*.arrow"))) == 4
    # the file is the examples as a dataset too
    import datasets
    ds = datasets.Dataset.from_file(str(files[0]))
    assert ds.column_names == ["text", "label", "input_ids", "token_type_ids", "length"]
    assert ds["text"][:] == examples.texts and ds["label"][:] == examples.labels.tolist()
    assert ds["length"][:] == first.lengths.tolist()


def test_a_damaged_or_foreign_cache_file_is_made_again(tok, tmp_path):
    examples = sst2_like()
    token_table(examples, tok, 16, tmp_path)
    path = next(tmp_path.glob("*.arrow"))
    other = sst2_like(seed=1)
    token_table(other, tok, 16, tmp_path)
    other_path = next(p for p in tmp_path.glob("*.arrow") if p != path)
    expected = tokenize_in_memory(examples, tok, 16)
    for damage in ("truncate", "foreign"):
        if damage == "truncate":
            path.write_bytes(path.read_bytes()[:200])
        else:
            path.write_bytes(other_path.read_bytes())      # the name's key, another set's rows
        said = []
        assert same(token_table(examples, tok, 16, tmp_path, log=said.append), expected), damage
        assert said[0].startswith(f"[data] ignoring the token cache {path}:") and "tokenizing again" in said[0]
        assert "tokenizing 40 examples" in said[1]
        said.clear()
        token_table(examples, tok, 16, tmp_path, log=said.append)
        assert said[0].startswith("[data] token ids of 40 examples"), said      # written anew, read from now on


def test_examples_as_a_dataset():
    pairs = Examples(["a", "b"], ["c", "d"], np.array([1.5, 2.0], np.float32), get_task("stsb"))
    ds = examples_dataset(pairs)
    assert ds.column_names == ["text", "pair", "label"] and str(ds.features["label"].dtype) == "float32"
    assert ds["pair"][:] == ["c", "d"] and ds["label"][:] == [1.5, 2.0]
    single = examples_dataset(sst2_like(3))
    assert single.column_names == ["text", "label"] and single.features["label"].dtype == "int64"


def test_a_table_refuses_what_it_does_not_hold(tok):
    from minitinybert.data.batches import TaskBatches
    examples = sst2_like(5)
    table = tokenize_in_memory(examples, tok, 16)
    with pytest.raises(DataError, match="at least one example"):
        table.batch([])
    with pytest.raises(DataError, match="token ids of 5 examples at max length 16 given for 5 examples at max "
                                        "length 20"):
        TaskBatches(examples, tok, 2, 20, seed=0, tokens=table)


def test_a_second_stage_and_a_second_run_read_the_token_files(world, tmp_path, capsys):  # noqa: F811
    """The teacher stage tokenizes its training and dev sets into --token-cache; the same stage in
    another run reads both; --token-cache off writes none."""
    cache = tmp_path / "tokens"
    for out in ("one", "two"):
        assert main(["finetune-teacher", *cli(world, tmp_path / out), "--teacher-steps", "1",
                     "--token-cache", str(cache)]) == 0
        said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[data]")]
        assert len(said) == 2, said
        if out == "one":
            assert all(line.startswith("[data] tokenizing") for line in said), said
        else:
            assert all(line.startswith("[data] token ids of") and "read from" in line for line in said), said
    assert sorted(p.name.split("-")[1] for p in cache.glob("*.arrow")) == ["24x64", "64x64"]
    assert main(["finetune-teacher", *cli(world, tmp_path / "three"), "--teacher-steps", "1",
                 "--token-cache", "off"]) == 0
    assert "[data]" not in capsys.readouterr().out and len(list(cache.glob("*.arrow"))) == 2
