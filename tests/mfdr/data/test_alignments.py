"""Word alignments: the readers on files in the exact real formats (Sphinx .wdseg as IEMOCAP ships it,
Praat TextGrids as the Montreal Forced Aligner writes them, long and short text formats, UTF-8 and
UTF-16, word,start,end CSVs), their errors, and the readers that attach them to records."""

import warnings

import pytest

from mfdr.data import DataError, read_iemocap, read_manifest, write_manifest
from mfdr.data.alignment import (
    AlignmentError,
    check_words,
    read_alignment,
    read_alignment_csv,
    read_textgrid,
    read_wdseg,
)

# An MFA words tier: silence as empty intervals at both ends and between "me" and "please".
INTERVALS = [(0.0, 0.23, ""), (0.23, 0.71, "excuse"), (0.71, 0.9, "me"), (0.9, 1.15, ""), (1.15, 1.62, "please"),
             (1.62, 2.0, "")]
WORDS = (("excuse", 0.23, 0.71), ("me", 0.71, 0.9), ("please", 1.15, 1.62))
PHONES = [(0.0, 0.23, ""), (0.23, 0.3, "IH0"), (0.3, 0.71, "K"), (0.71, 0.9, "M"), (0.9, 1.15, "sil"),
          (1.15, 1.62, "P"), (1.62, 2.0, "")]


def _num(x: float) -> str:
    return f"{x:g}"


def textgrid_long(tiers, xmax=2.0) -> str:
    """Praat's long text format, as Praat and MFA (through praatio) write it: trailing spaces included."""
    out = ['File type = "ooTextFile"', 'Object class = "TextGrid"', "", "xmin = 0 ", f"xmax = {_num(xmax)} ",
           "tiers? <exists> ", f"size = {len(tiers)} ", "item []: "]
    for i, (name, intervals) in enumerate(tiers, 1):
        out += [f"    item [{i}]:", '        class = "IntervalTier" ', f'        name = "{name}" ',
                "        xmin = 0 ", f"        xmax = {_num(xmax)} ", f"        intervals: size = {len(intervals)} "]
        for j, (a, b, label) in enumerate(intervals, 1):
            out += [f"        intervals [{j}]:", f"            xmin = {_num(a)} ", f"            xmax = {_num(b)} ",
                    f'            text = "{label}" ']
    return "\n".join(out) + "\n"


def textgrid_short(tiers, xmax=2.0) -> str:
    """Praat's short text format (one value a line)."""
    out = ['File type = "ooTextFile"', 'Object class = "TextGrid"', "", "0", _num(xmax), "<exists>", str(len(tiers))]
    for name, intervals in tiers:
        out += ['"IntervalTier"', f'"{name}"', "0", _num(xmax), str(len(intervals))]
        for a, b, label in intervals:
            out += [_num(a), _num(b), f'"{label}"']
    return "\n".join(out) + "\n"


@pytest.fixture
def wav(tmp_path, make_wav):
    return make_wav(tmp_path / "u.wav", seconds=2.0)


# ----------------------------------------------------------------------------- TextGrid

@pytest.mark.parametrize("form", ["long", "short", "long-utf16", "short-crlf", "long-utf8-bom"])
def test_textgrid_formats(tmp_path, form):
    tiers = [("words", INTERVALS), ("phones", PHONES)]
    text = (textgrid_short if form.startswith("short") else textgrid_long)(tiers)
    path = tmp_path / "u.TextGrid"
    if form == "long-utf16":          # Praat writes UTF-16 (with a BOM) when a label is not ASCII
        path.write_text(text, encoding="utf-16")
    elif form == "short-crlf":
        path.write_bytes(text.replace("\n", "\r\n").encode())
    elif form == "long-utf8-bom":
        path.write_text(text, encoding="utf-8-sig")
    else:
        path.write_text(text)
    assert read_textgrid(path) == WORDS
    assert read_alignment(path, duration=2.0) == WORDS


def test_textgrid_tiers(tmp_path):
    path = tmp_path / "two.TextGrid"   # MFA, several speakers: "<speaker> - words"
    path.write_text(textgrid_long([("spk1 - words", INTERVALS), ("spk1 - phones", PHONES)]))
    assert read_textgrid(path) == WORDS
    path.write_text(textgrid_long([("spk1 - words", INTERVALS), ("spk2 - words", INTERVALS[:2])]))
    with pytest.raises(AlignmentError, match=r"two.TextGrid: expected one 'words' tier .*'spk2 - words'"):
        read_textgrid(path)
    assert read_textgrid(path, tier="spk2 - words") == WORDS[:1]
    path.write_text(textgrid_long([("phones", PHONES)]))
    with pytest.raises(AlignmentError, match=r"found tiers \['phones'\]"):
        read_textgrid(path)
    with pytest.raises(AlignmentError, match="no tier 'words'; its tiers are"):
        read_textgrid(path, tier="words")


def test_bad_textgrids_name_the_file(tmp_path):
    path = tmp_path / "bad.TextGrid"
    path.write_text("xmin,xmax,word\n0,1,hello\n")
    with pytest.raises(AlignmentError, match=r"bad.TextGrid: not a Praat TextGrid"):
        read_textgrid(path)
    full = textgrid_long([("words", INTERVALS)])
    path.write_text(full[:260])                                   # cut before the first interval
    with pytest.raises(AlignmentError, match=r"bad.TextGrid: tier 'words' declares 6 intervals but holds 0"):
        read_textgrid(path)
    path.write_text(full[:500])                                   # cut inside an interval
    with pytest.raises(AlignmentError, match=r"bad.TextGrid cannot be parsed"):
        read_textgrid(path)
    short = textgrid_short([("words", INTERVALS)])
    path.write_text(short[: short.index('"excuse"')])             # short format: praatio stops quietly
    with pytest.raises(AlignmentError, match=r"bad.TextGrid: tier 'words' declares 6 intervals but holds 1"):
        read_textgrid(path)
    backwards = [(0.9, 1.2, "me"), (0.2, 0.7, "excuse")]
    path.write_text(textgrid_long([("words", backwards)]))
    with pytest.raises(AlignmentError, match=r"bad.TextGrid: word 2 'excuse' starts at 0.200 s, before"):
        read_textgrid(path)
    path.write_text(textgrid_long([("words", INTERVALS)], xmax=2.0))
    with pytest.raises(AlignmentError, match=r"bad.TextGrid: word 3 'please' \(1.150-1.620 s\) lies outside "
                                             r"the audio \(1.000 s long\)"):
        read_textgrid(path, duration=1.0)
    assert issubclass(AlignmentError, DataError)


# ----------------------------------------------------------------------------- CSV and checks

def test_csv(tmp_path):
    path = tmp_path / "u.csv"
    path.write_text("word,start,end\nexcuse,0.23,0.71\nme,0.71,0.9\n\nplease,1.15,1.62\n")
    assert read_alignment_csv(path) == WORDS
    path.write_text("excuse,0.23,0.71\r\nme,0.71,0.9\r\nplease,1.15,1.62\r\n")          # no header, CRLF
    assert read_alignment(path) == WORDS
    path.write_text("word,start,end\nexcuse,0.23\n")
    with pytest.raises(AlignmentError, match=r"u.csv, line 2: expected 3 columns"):
        read_alignment_csv(path)
    path.write_text("word,start,end\nexcuse,soon,0.71\n")
    with pytest.raises(AlignmentError, match=r"u.csv, line 2: start and end must be numbers"):
        read_alignment_csv(path)
    path.write_text("word,start,end\nexcuse,0.5,0.4\n")
    with pytest.raises(AlignmentError, match=r"word 1 'excuse' ends \(0.400 s\) before it starts"):
        read_alignment_csv(path)


def test_check_words():
    assert check_words([("a", 0, 1.0)], "x", duration=0.97) == (("a", 0.0, 0.97),)      # end clipped
    with pytest.raises(AlignmentError, match="x: word 1 'a' .* lies outside the audio"):
        check_words([("a", 0, 1.2)], "x", duration=1.0)
    with pytest.raises(AlignmentError, match="x: word 2 'b' .* lies outside the audio"):
        check_words([("a", 0, 0.5), ("b", 1.0, 1.0)], "x", duration=1.0)
    with pytest.raises(AlignmentError, match="expected finite times >= 0"):
        check_words([("a", float("nan"), 1)], "x")
    with pytest.raises(AlignmentError, match="expected finite times >= 0"):
        check_words([("a", -0.1, 1)], "x")
    with pytest.raises(AlignmentError, match=r"word 1 is not \(word, start, end\)"):
        check_words([("a", 0)], "x")


def test_read_alignment_suffixes(tmp_path):
    with pytest.raises(AlignmentError, match=r"u.TextGrid does not exist"):
        read_alignment(tmp_path / "u.TextGrid")
    (tmp_path / "u.json").write_text("[]")
    with pytest.raises(AlignmentError, match=r"expected a .TextGrid, .csv or .wdseg file, got suffix '.json'"):
        read_alignment(tmp_path / "u.json")


# ----------------------------------------------------------------------------- .wdseg

def test_wdseg_oddities(tmp_path, wdseg_lines):
    lines, expected = wdseg_lines("Excuse me, I'm late.")
    path = tmp_path / "u.wdseg"
    path.write_text("\n".join(lines) + "\n")
    assert read_wdseg(path) == tuple(expected)
    assert [w for w, _, _ in expected] == ["excuse", "me", "i'm", "late"]     # ME(2) -> me; noise dropped
    assert read_alignment(path, duration=0.2) == tuple(expected)
    path.write_text("\r\n".join(lines).replace(" ", "\t") + "\r\n")            # tabs, CRLF
    assert read_wdseg(path) == tuple(expected)


def test_bad_wdseg_names_the_file(tmp_path, wdseg_lines):
    lines, _ = wdseg_lines("Excuse me.")
    path = tmp_path / "u.wdseg"
    path.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(AlignmentError, match=r"u.wdseg: no final 'Total score' line"):
        read_wdseg(path)
    path.write_text("\n".join(lines[1:]) + "\n")
    with pytest.raises(AlignmentError, match=r"u.wdseg: expected the header 'SFrm EFrm SegAScr Word'"):
        read_wdseg(path)
    path.write_text("")
    with pytest.raises(AlignmentError, match=r"\(empty file\)"):
        read_wdseg(path)
    path.write_text("\n".join([lines[0], "    2     4     -27000", lines[-1]]) + "\n")
    with pytest.raises(AlignmentError, match=r"u.wdseg, line 2: expected 'SFrm EFrm SegAScr Word'"):
        read_wdseg(path)
    path.write_text("\n".join([lines[0], "    2     x     -27000 HI", lines[-1]]) + "\n")
    with pytest.raises(AlignmentError, match=r"u.wdseg, line 2: frames and score must be integers"):
        read_wdseg(path)
    path.write_text("\n".join([lines[0], "    9     4     -27000 HI", lines[-1]]) + "\n")
    with pytest.raises(AlignmentError, match=r"u.wdseg, line 2: end frame 4 before start frame 9"):
        read_wdseg(path)
    path.write_text("\n".join([lines[0], "   10    14     -27000 HI", "    2     4     -2700 YOU", lines[-1]]) + "\n")
    with pytest.raises(AlignmentError, match=r"u.wdseg: word 2 'you' starts at 0.020 s, before"):
        read_wdseg(path)
    path.write_text("\n".join([lines[0], "    2    14     -27000 HI", lines[-1]]) + "\n")
    assert read_wdseg(path) == (("hi", 0.02, 0.15),)
    with pytest.raises(AlignmentError, match=r"u.wdseg: word 1 'hi' \(0.020-0.150 s\) lies outside the audio"):
        read_wdseg(path, duration=0.05)


# ----------------------------------------------------------------------------- readers -> Record.words

def test_iemocap_reads_the_word_segmentations(iemocap_root, iemocap_words, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="mfdr.data"):
        recs = read_iemocap(iemocap_root)
    assert {r.id: r.words for r in recs} == iemocap_words
    assert recs.aligned == len(recs) - 1
    assert "1 utterances have no .wdseg word segmentation" in caplog.text
    assert "word alignments: 6 of 7" in recs.summary()
    assert all(r.words is None for r in read_iemocap(iemocap_root, alignments=False))


def test_iemocap_bad_wdseg_raises_or_loses_only_the_words(iemocap_root, iemocap_words):
    bad = (iemocap_root / "Session1" / "sentences" / "ForcedAlignment" / "Ses01F_impro01" /
           "Ses01F_impro01_F001.wdseg")
    original = bad.read_text()
    bad.write_text("\n".join(original.splitlines()[:-1]) + "\n")        # truncated: no Total score line
    with pytest.raises(AlignmentError, match=r"Ses01F_impro01_F001.wdseg"):
        read_iemocap(iemocap_root)
    with pytest.warns(UserWarning, match=r"Ses01F_impro01_F001.wdseg: no final 'Total score' line"):
        recs = read_iemocap(iemocap_root, on_error="skip")
    assert len(recs) == 7 and {r.id: r.words for r in recs} == {**iemocap_words, "Ses01F_impro01_F001": None}
    assert recs.skipped and "Ses01F_impro01_F001.wdseg" in recs.skipped[0][0]
    # words past the end of the audio (0.2 s): the wav's length is the check
    bad.write_text(original)
    good = iemocap_root / "Session1" / "sentences" / "ForcedAlignment" / "Ses01F_impro01" / "Ses01F_impro01_F000.wdseg"
    good.write_text(good.read_text().replace("    6     8 ", "   16    38 "))
    with pytest.raises(AlignmentError, match=r"Ses01F_impro01_F000.wdseg: word 2 'me' .* outside the audio"):
        read_iemocap(iemocap_root)


def test_manifest_alignment_column(tmp_path, make_wav):
    make_wav(tmp_path / "wavs" / "a.wav", seconds=2.0)
    make_wav(tmp_path / "wavs" / "b.wav", seconds=2.0)
    make_wav(tmp_path / "wavs" / "c.wav", seconds=2.0)
    (tmp_path / "aligned").mkdir()
    (tmp_path / "aligned" / "a.TextGrid").write_text(textgrid_long([("words", INTERVALS), ("phones", PHONES)]))
    (tmp_path / "aligned" / "b.csv").write_text("word,start,end\nexcuse,0.23,0.71\nme,0.71,0.9\nplease,1.15,1.62\n")
    (tmp_path / "m.csv").write_text(
        "id,wav,text,label,speaker,alignment\n"
        "a,wavs/a.wav,Excuse me... please!,neutral,s1,aligned/a.TextGrid\n"
        f"b,wavs/b.wav,Excuse me please,sad,s2,{tmp_path / 'aligned' / 'b.csv'}\n"
        "c,wavs/c.wav,No alignment here,sad,s2,\n")
    recs = read_manifest(tmp_path / "m.csv")
    assert [r.words for r in recs] == [WORDS, WORDS, None] and recs.aligned == 2
    assert recs[0].alignment == tmp_path / "aligned" / "a.TextGrid" and recs[2].alignment is None
    assert "alignment" not in recs[0].extra
    out = write_manifest(recs, tmp_path / "copy" / ".." / "m2.jsonl")          # paths stay relative
    assert '"alignment": "aligned/a.TextGrid"' in out.read_text()
    assert [r.words for r in read_manifest(out)] == [WORDS, WORDS, None]


def test_manifest_bad_alignment_raises_or_keeps_the_row(tmp_path, make_wav):
    make_wav(tmp_path / "a.wav", seconds=1.0)
    make_wav(tmp_path / "b.wav", seconds=1.0)
    (tmp_path / "a.csv").write_text("word,start,end\nexcuse,0.23,0.71\nplease,1.15,1.62\n")   # past 1 s
    (tmp_path / "m.csv").write_text("id,wav,text,label,speaker,alignment\na,a.wav,Excuse please,sad,s1,a.csv\n"
                                    "b,b.wav,Hello,sad,s1,missing.TextGrid\n")
    with pytest.raises(AlignmentError, match=r"m.csv, line 2: alignment CSV .*a.csv: word 2 'please' "
                                             r"\(1.150-1.620 s\) lies outside the audio \(1.000 s long\)"):
        read_manifest(tmp_path / "m.csv")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        recs = read_manifest(tmp_path / "m.csv", on_error="skip")
    assert [r.id for r in recs] == ["a", "b"] and [r.words for r in recs] == [None, None]
    messages = " ".join(str(w.message) for w in caught)
    assert "a.csv: word 2 'please'" in messages and "missing.TextGrid does not exist" in messages
    assert len(recs.skipped) == 2


# ----------------------------------------------------------------------------- tokens -> frames (pure)

def test_char_words_matches_letters_across_punctuation_and_splits():
    from mfdr.data.alignment import char_words

    text = "Well-known, I can't... um, go!"
    owner = char_words(text, ["well", "known", "i", "can't", "go"])          # the aligner split "well-known"
    by_char = {c: owner[i] for i, c in enumerate(text) if c.isalpha()}
    assert [owner[i] for i in range(4)] == [0] * 4 and owner[text.index("known")] == 1
    can = text.index("can't")
    assert owner[text.index("I")] == 2 and [owner[can + k] for k in range(5)] == [3, 3, 3, -1, 3]  # ' is no letter
    assert owner[text.index("um")] == -1 and by_char["g"] == 4 and owner[text.index(",")] == -1


def test_token_starts_rules():
    from mfdr.data.alignment import frame_of, token_starts

    text = "Oh, the zebrafish can't swim!"
    words = (("oh", 0.10, 0.3), ("the", 0.58, 0.7), ("zebrafish", 0.7, 1.3), ("can't", 1.3, 1.6), ("swim", 1.62, 2.0))
    # [CLS] oh , the zebra ##fish can ' t swim ! [SEP] [PAD] [PAD], as a fast BERT tokenizer gives them
    word_ids = [None, 0, 1, 2, 3, 3, 4, 5, 6, 7, 8, None, None, None]
    offsets = [(0, 0), (0, 2), (2, 3), (4, 7), (8, 13), (13, 17), (18, 21), (21, 22), (22, 23), (24, 28),
               (28, 29), (0, 0), (0, 0), (0, 0)]
    starts = token_starts(text, words, word_ids, offsets, frame_rate=50)
    assert frame_of(0.58, 50) == 29                                          # not 28 (0.58 * 50 = 28.999...)
    assert starts == [5, 5, 5, 29, 35, 35, 65, 65, 65, 81, 81, 81, 81, 81]
    assert token_starts(text, words, word_ids, offsets, frame_rate=100)[:5] == [10, 10, 10, 58, 70]
    assert token_starts("hello there", (("zzz", 0, 1),), [0, 1], [(0, 5), (6, 11)], 50) is None
    # a word the aligner skipped ("oh") takes the preceding word's start, or the first one's
    assert token_starts(text, words[1:], word_ids, offsets, 50)[:4] == [29, 29, 29, 29]
    with pytest.raises(ValueError, match="3 word ids but 2 offsets"):
        token_starts(text, words, [0, 1, 2], [(0, 1), (1, 2)], 50)
