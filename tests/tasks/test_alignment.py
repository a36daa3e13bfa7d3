"""Alignment building blocks: AER by hand, Pharaoh I/O, a grammar whose gold links point at the right words."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lceval.errors import UserError
from lceval.metrics import aer, alignment_counts, sum_counts
from lceval.tasks.alignment.grammar import ADJECTIVES, ARTICLES, BARE, NOUNS, VERBS, feminine, sentence
from lceval.tasks.alignment.pharaoh import Gold, format_line, parse_line, read_pharaoh, write_pharaoh


def test_aer_sure_only_by_hand():
    sure = {(0, 0), (1, 2), (2, 1)}
    c = alignment_counts({(0, 0), (1, 2), (2, 2)}, sure, set())
    assert c == {"a": 3, "s": 3, "a_and_s": 2, "a_and_p": 2}
    r = aer(c)
    assert r["aer"] == pytest.approx(1 - 4 / 6) and r["precision"] == pytest.approx(2 / 3)
    assert r["recall"] == pytest.approx(2 / 3)


def test_aer_with_possible_links_by_hand():
    sure, possible = {(0, 0), (3, 3)}, {(1, 1), (1, 2)}
    predicted = {(0, 0), (1, 2), (2, 2)}  # one sure, one possible, one wrong
    c = alignment_counts(predicted, sure, possible)
    assert c == {"a": 3, "s": 2, "a_and_s": 1, "a_and_p": 2}
    r = aer(c)
    assert r["aer"] == pytest.approx(1 - (1 + 2) / (3 + 2))  # 0.4
    assert r["precision"] == pytest.approx(2 / 3) and r["recall"] == pytest.approx(1 / 2)
    perfect = aer(alignment_counts(sure | {(1, 1)}, sure, possible))
    assert perfect["aer"] == 0.0  # sure links plus possible ones: no error


def test_aer_empty_prediction_and_ratio_of_sums():
    empty = aer(alignment_counts(set(), {(0, 0)}, set()))
    assert empty["aer"] == 1.0 and empty["recall"] == 0.0 and math.isnan(empty["precision"])
    a = alignment_counts({(0, 0)}, {(0, 0)}, set())  # perfect, 1 link
    b = alignment_counts({(0, 1), (1, 0), (2, 2)}, {(0, 0), (1, 1), (2, 2)}, set())  # 1 of 3
    pooled = aer(sum_counts([a, b]))["aer"]
    assert pooled == pytest.approx(1 - (2 + 2) / (4 + 4))  # 0.5, a ratio of sums
    assert pooled != pytest.approx((aer(a)["aer"] + aer(b)["aer"]) / 2)  # not the mean of ratios (1/3)


def test_pharaoh_round_trip(tmp_path):
    golds = [Gold({(0, 0), (2, 1)}, {(1, 1)}), Gold(), Gold({(3, 4)}, {(3, 4), (0, 2)})]
    path = tmp_path / "gold.txt"
    write_pharaoh(path, golds)
    assert path.read_text().splitlines()[0] == "0-0 1p1 2-1"
    back = read_pharaoh(path)
    assert [(g.sure, g.possible) for g in back] == [(g.sure, g.possible) for g in golds]
    assert back[2].possible == {(3, 4), (0, 2)}  # sure links are possible too
    assert format_line(parse_line("2p0 0-1")) == "0-1 2p0"


@pytest.mark.parametrize("line", ["0-1 2x3", "1-", "a-b", "0 - 1"])
def test_malformed_gold_line_names_file_and_line(tmp_path, line):
    path = tmp_path / "gold.txt"
    path.write_text("0-0 1-1\n" + line + "\n")
    with pytest.raises(UserError, match=r"gold.txt line 2: .* is not a Pharaoh link"):
        read_pharaoh(path)
    with pytest.raises(UserError, match="not found"):
        read_pharaoh(tmp_path / "missing.txt")


def translations() -> set[tuple[str, str]]:
    """Every (source word, target word) pair a link may join."""
    pairs = {(n, t) for n, (t, _) in NOUNS.items()} | {(d, t) for (d, _), t in ARTICLES.items()}
    pairs |= {(a, t) for a, t in ADJECTIVES.items()} | {(a, feminine(t)) for a, t in ADJECTIVES.items()}
    pairs |= {(v, t) for v, t in VERBS.items()} | {(BARE[v], t) for v, t in VERBS.items()}
    pairs |= {("I", "je"), ("think", "pense"), ("not", "ne"), ("not", "pas"), ("tonight", "ce"), ("tonight", "soir"),
              ("looks", "regarde"), ("look", "regarde"), ("at", "regarde"), (".", ".")}
    return pairs


def test_gold_links_point_at_the_right_words_and_every_phenomenon_occurs():
    ok = translations()
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(300):
        p = sentence(rng)
        for i, j in p.gold.possible:
            assert (p.source[i], p.target[j]) in ok, (p.source[i], p.target[j])
        aligned_src = {i for i, _ in p.gold.possible}
        aligned_tgt = {j for _, j in p.gold.possible}
        if "does" in p.source:
            assert p.source.index("does") not in aligned_src
            seen.add("source word without counterpart")
        if "que" in p.target:
            assert p.target.index("que") not in aligned_tgt
            seen.add("target word without counterpart")
        if "not" in p.source:
            js = sorted(j for i, j in p.gold.sure if p.source[i] == "not")
            assert len(js) == 2 and js[1] - js[0] > 1  # ne ... pas, discontiguous
            seen.add("discontiguous one-to-many")
        if "at" in p.source:
            j = p.target.index("regarde")
            assert {p.source[i] for i, jj in p.gold.possible if jj == j} >= {"at"}
            seen.add("many-to-one")
        if any(i1 < i2 and j1 > j2 for i1, j1 in p.gold.sure for i2, j2 in p.gold.sure):
            seen.add("reordering")
        if any(w.endswith("e") and w[:-1] in ADJECTIVES.values() for w in p.target):
            seen.add("agreement")
        if "tonight" in p.source:
            seen.add("one-to-many")
    assert len(seen) == 7, seen


def bpe_over(words):
    from conftest import byte_bpe, word_corpus

    return byte_bpe(word_corpus(words, 10), 280)


@pytest.mark.parametrize("family", ["word", "bpe"])
@pytest.mark.parametrize("layout", ["concatenated", "interleaved"])
def test_documents_are_exact_and_links_decode_to_the_right_words(layout, family):
    from lceval.tasks.alignment.document import build_document, vocabulary
    from lceval.tokenizer import word_level

    tok = word_level(vocabulary()) if family == "word" else bpe_over(vocabulary())
    ok = translations()
    rng = np.random.default_rng(1)
    for length in (120, 333, 1000):
        for depth in (0.0, 0.5, 1.0):
            doc = build_document(rng, tok, length, depth, layout)
            assert len(doc.ids) == length
            if len(doc.pairs) > 1:  # one pair has one depth; the realized depth records it
                assert abs(doc.depth - depth) <= 1 / (len(doc.pairs) - 1) / 2 + 1e-9
            pair = doc.pairs[doc.focus]
            src, tgt = doc.src_spans[doc.focus], doc.tgt_spans[doc.focus]
            # every word's span decodes to that word
            assert [tok.decode(doc.ids[a:b]).strip() for a, b in src] == pair.source
            assert [tok.decode(doc.ids[a:b]).strip() for a, b in tgt] == pair.target
            for i, j in pair.gold.possible:  # the gold links join a word and its translation
                assert (tok.decode(doc.ids[slice(*src[i])]).strip(), tok.decode(doc.ids[slice(*tgt[j])]).strip()) in ok
            sure, possible = doc.focus_links()
            assert sure <= possible and len(sure) == len(pair.gold.sure)
            gap = min(t for _, t in sure) - max(s for s, _ in sure)
            if layout == "interleaved":
                assert gap < 40  # the translation follows its source
            else:  # every later source sentence lies between a target word and its source
                later = sum(spans[-1][1] - spans[0][0] for spans in doc.src_spans[doc.focus + 1 :])
                assert gap >= later


def test_a_length_too_short_for_one_pair_is_a_clear_error():
    from lceval.tasks.alignment.document import build_document, vocabulary
    from lceval.tokenizer import word_level

    with pytest.raises(UserError, match="cannot hold one sentence pair"):
        build_document(np.random.default_rng(0), word_level(vocabulary()), 8, 0.5, "interleaved")
    with pytest.raises(UserError, match="layout must be one of"):
        build_document(np.random.default_rng(0), word_level(vocabulary()), 100, 0.5, "sideways")


# --- bring your own parallel text -----------------------------------------------------------
def fixture_files():
    from conftest import ROOT

    d = ROOT / "tests" / "fixtures" / "parallel"
    return d / "en.txt", d / "fr.txt", d / "en-fr.gold"


def test_parallel_files_load_with_their_gold_links():
    from lceval.tasks.alignment.parallel import load_pairs

    pairs = load_pairs(*fixture_files())
    assert len(pairs) == 6
    love = pairs[0]
    assert love.source == ["I", "love", "you"] and love.target == ["je", "t'aime"]
    assert love.gold.sure == {(0, 0), (1, 1), (2, 1)}  # love and you both -> t'aime (many-to-one)
    negation = pairs[2]
    assert {(negation.source[i], negation.target[j]) for i, j in negation.gold.sure} == {
        ("I", "je"), ("not", "ne"), ("not", "pas"), ("know", "sais")}
    assert (1, 1) in negation.gold.possible - negation.gold.sure  # do ~ ne, possible only


@pytest.mark.parametrize("case,want", [
    ("lines", "different lengths: .*src.txt has 2 lines"),
    ("range", r"gold.txt line 2: link 3-0 points past the sentence pair \(2 source words"),
    ("blank", "src.txt line 2: empty sentence"),
    ("malformed", "gold.txt line 1: '0_0' is not a Pharaoh link"),
])
def test_parallel_file_errors_name_the_file_and_line(tmp_path, case, want):
    from lceval.tasks.alignment.parallel import load_pairs

    src, tgt, gold = ["a b", "c d"], ["x y", "z w"], ["0-0 1-1", "0-0 1-1"]
    if case == "lines":
        tgt = tgt[:1]
    elif case == "range":
        gold[1] = "3-0"
    elif case == "blank":
        src[1] = "   "
    elif case == "malformed":
        gold[0] = "0_0"
    for name, lines in (("src.txt", src), ("tgt.txt", tgt), ("gold.txt", gold)):
        (tmp_path / name).write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=want):
        load_pairs(tmp_path / "src.txt", tmp_path / "tgt.txt", tmp_path / "gold.txt")


@pytest.mark.parametrize("family", ["word", "bpe"])
def test_word_spans_come_from_the_tokenizers_offsets(family):
    from lceval.tasks.alignment.parallel import load_pairs
    from lceval.tokenizer import word_level

    pairs = load_pairs(*fixture_files())
    words = sorted({w for p in pairs for w in (*p.source, *p.target)})
    tok = word_level(words) if family == "word" else bpe_over(["je t aime merci"])  # a BPE that splits words
    for p in pairs:
        for sent in (p.source, p.target):
            ids, spans = tok.words(sent)
            assert ids == tok.piece(" ".join(sent))  # the sentence as running text, encoded once
            assert [tok.decode(ids[a:b]).strip() for a, b in spans] == sent
            assert spans[0][0] == 0 and spans[-1][1] == len(ids)
            assert all(b1 == a2 for (_, b1), (a2, _) in zip(spans, spans[1:], strict=False))  # contiguous
    if family == "bpe":
        assert max(b - a for a, b in tok.words(pairs[4].source)[1]) > 1  # some word really is several tokens


@pytest.mark.parametrize("layout", ["concatenated", "interleaved"])
def test_documents_from_parallel_files_are_exact_and_gold_decodes(layout):
    from lceval.tasks.alignment.document import build_document
    from lceval.tasks.alignment.parallel import load_pairs

    pairs = load_pairs(*fixture_files())
    tok = bpe_over(["je t aime merci", "<src> <tgt> ~ ."])
    rng = np.random.default_rng(3)
    for length in (64, 300):
        for depth in (0.0, 1.0):
            doc = build_document(rng, tok, length, depth, layout, pairs)
            assert len(doc.ids) == length
            pair = doc.pairs[doc.focus]
            src, tgt = doc.src_spans[doc.focus], doc.tgt_spans[doc.focus]
            for i, j in pair.gold.possible:  # every gold link joins the words the files name
                assert tok.decode(doc.ids[slice(*src[i])]).strip() == pair.source[i]
                assert tok.decode(doc.ids[slice(*tgt[j])]).strip() == pair.target[j]


def test_parallel_data_in_a_config_is_checked_and_hashed(tmp_path):
    from lceval.config import validate_task_config
    from lceval.errors import ConfigError
    from lceval.tasks.alignment.task import Alignment

    src, tgt, gold = fixture_files()
    data = {"source": str(src), "target": str(tgt), "gold": str(gold)}
    cfg = validate_task_config(Alignment, {"data": data}, "tasks.alignment")
    assert len(cfg.data.pairs) == 6 and "t'aime" in Alignment(cfg).vocabulary()
    dumped = cfg.model_dump(mode="json")["data"]
    assert all(len(dumped[f]["sha256"]) == 16 for f in data)  # the files' contents are part of the run identity
    bad = tmp_path / "bad.gold"
    bad.write_text(gold.read_text().replace("0-0 1-0", "0-0 9-0"))
    with pytest.raises(ConfigError, match=r"tasks\.alignment\.data: .*bad.gold line 4: link 9-0 points past"):
        validate_task_config(Alignment, {"data": {**data, "gold": str(bad)}}, "tasks.alignment")


def test_data_paths_are_relative_to_the_config_and_their_contents_are_in_the_run_identity(tmp_path):
    import shutil

    import yaml

    from lceval.resolve import load_config
    from lceval.runner import identity, run_id

    data = tmp_path / "cfg" / "data"
    data.mkdir(parents=True)
    for f in fixture_files():
        shutil.copy(f, data / f.name)
    cfg = {"run": {"name": "byod", "seed": 0},
           "models": {"m": {"type": "reference", "checkpoint": "zoo:quickstart-rotary"}},
           "pairings": [{"model": "m", "attention": "full"}],
           "tasks": {"alignment": {"data": {"source": "data/en.txt", "target": "data/fr.txt",
                                            "gold": "data/en-fr.gold"}}}}
    path = tmp_path / "cfg" / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    resolved = load_config(path)  # read from the config's folder, whatever the current directory
    assert resolved.tasks["alignment"].data.source.path == (data / "en.txt").resolve()
    first = run_id(identity(resolved, None, {}))
    gold = data / "en-fr.gold"
    gold.write_text(gold.read_text().replace("0-0 1-0", "0-0 1p0"))  # one link edited, same path
    assert run_id(identity(load_config(path), None, {})) != first


def test_an_edited_data_file_is_named_when_a_run_directory_refuses_it():
    from lceval.store import describe_change

    old = {"config": {"tasks": {"alignment": {"data": {"gold": "g"}}}},
           "task_configs": {"alignment": {"data": {"gold": "g", "sha256": "aaa"}}}}
    new = {"config": {"tasks": {"alignment": {"data": {"gold": "g"}}}},
           "task_configs": {"alignment": {"data": {"gold": "g", "sha256": "bbb"}}}}
    assert describe_change(old, new) == "task config alignment.data.sha256"
    edited = {"config": {"tasks": {"alignment": {"samples": 3}}}, "task_configs": {"alignment": {"samples": 3}}}
    plain = {"config": {"tasks": {"alignment": {"samples": 2}}}, "task_configs": {"alignment": {"samples": 2}}}
    assert describe_change(plain, edited) == "config tasks.alignment.samples"  # named once
    assert "not recorded by the older run" in describe_change({"config": {}}, {"config": {}, "task_configs": {}})
