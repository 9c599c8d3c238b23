"""Fixtures in the real dataset formats, written by the tests: a small IEMOCAP tree (with its Sphinx
``.wdseg`` word segmentations), Praat TextGrids as the Montreal Forced Aligner writes them."""

from pathlib import Path

import numpy as np
import pytest

EVAL_HEADER = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"

# (session, dialog, [(utterance suffix, code, text)]); every IEMOCAP label kind appears.
DIALOGS = [
    (1, "Ses01F_impro01", [("F000", "neu", "Excuse me."), ("M000", "fru", "Do you have your forms?"),
                           ("F001", "exc", "Yeah, this is great!"), ("M001", "ang", "Stop it right now."),
                           ("F002", "xxx", "Okay.")]),
    (1, "Ses01M_script01_1", [("F000", "sad", "I miss him so much."), ("M000", "hap", "What a lovely day."),
                              ("M001", "sur", "Really? You came?")]),
    (2, "Ses02M_impro03", [("F000", "neu", "The bus is late."), ("M000", "sad", "She is gone."),
                           ("M001", "dis", "Ugh, gross."), ("F001", "fea", "Who is there?"),
                           ("F002", "oth", "Hmm.")]),
]

EXPECTED = [  # (id, label, speaker, session, text) in reading order
    ("Ses01F_impro01_F000", "neutral", "Ses01F", 1, "Excuse me."),
    ("Ses01F_impro01_F001", "happy", "Ses01F", 1, "Yeah, this is great!"),
    ("Ses01F_impro01_M001", "angry", "Ses01M", 1, "Stop it right now."),
    ("Ses01M_script01_1_F000", "sad", "Ses01F", 1, "I miss him so much."),
    ("Ses01M_script01_1_M000", "happy", "Ses01M", 1, "What a lovely day."),
    ("Ses02M_impro03_F000", "neutral", "Ses02F", 2, "The bus is late."),
    ("Ses02M_impro03_M000", "sad", "Ses02M", 2, "She is gone."),
]


def write_wav(path: Path, seconds: float = 0.2, sample_rate: int = 16000, seed: int = 0) -> Path:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sf.write(str(path), (0.1 * rng.standard_normal(int(seconds * sample_rate))).astype(np.float32),
             sample_rate, subtype="PCM_16")
    return path


# Utterances without a .wdseg file (the release lacks a few).
NO_WDSEG = {"Ses02M_impro03_M000"}


def wdseg_lines(text: str) -> tuple[list[str], list[tuple[str, float, float]]]:
    """The ``.wdseg`` of ``text`` as Sphinx writes it (header, right-aligned columns, <s>/</s>, a <sil>,
    noise tokens, a ``(2)`` variant on the second word, the final ``Total score`` line) in 20 frames of
    10 ms, and the words ``read_wdseg`` must return."""
    words = [w.strip(".,!?").upper() for w in text.split()]
    rows, expected, f = [("<s>", 0, 1)], [], 2
    for k, w in enumerate(words):
        token = f"{w}(2)" if k == 1 else w
        rows.append((token, f, f + 2))
        expected.append((w.lower(), f / 100, (f + 3) / 100))
        f += 3
        if k == 0:
            rows.append(("++BREATHING++" if len(words) % 2 else "[LAUGHTER]", f, f))
            f += 1
        elif k == 1 and f < 18:
            rows.append(("<sil>", f, f))
            f += 1
    rows.append(("</s>", f, 19))
    lines = [" SFrm  EFrm    SegAScr Word"]
    lines += [f"{a:5d} {b:5d} {-(1000 * (a + 7) * (b - a + 1)):10d} {w}" for w, a, b in rows]
    lines.append(f" Total score:  {-sum(1000 * (a + 7) for _, a, _ in rows):11d}")
    return lines, expected


def _eval_block(i: int, utt: str, code: str) -> str:
    start, end = 1.5 * i + 0.2901, 1.5 * i + 1.2357
    return (f"[{start:.4f} - {end:.4f}]\t{utt}\t{code}\t[2.5000, 2.5000, 2.5000]\n"
            f"C-E2:\tNeutral;\t()\nC-E3:\tFrustration; Anger;\t()\nC-F1:\tNeutral;\t(curious)\n"
            f"A-E3:\tval 3; act 2; dom  2;\t()\nA-F1:\tval 2; act 1; dom  3;\t()\n\n")


def make_iemocap(root: Path, dialogs=DIALOGS) -> Path:
    """Write an IEMOCAP-shaped tree under ``root`` (wavs for every utterance, 0.2 s of noise)."""
    for n, (session, dialog, utts) in enumerate(dialogs):
        sess = root / f"Session{session}"
        eval_dir, trans_dir = sess / "dialog" / "EmoEvaluation", sess / "dialog" / "transcriptions"
        for d in (eval_dir / "Categorical", trans_dir):
            d.mkdir(parents=True, exist_ok=True)
        (eval_dir / "Categorical" / f"{dialog}_e1_cat.txt").write_text(f"{dialog}_F000 :Neutral; ()\n")
        (eval_dir / f"._{dialog}.txt").write_bytes(b"\x00\x05\x16\x07 mac resource fork \xff")
        (eval_dir / f"{dialog}.txt").write_text(
            EVAL_HEADER + "".join(_eval_block(i, f"{dialog}_{s}", c) for i, (s, c, _) in enumerate(utts)))
        lines = ["M: [BREATHING]", f"{dialog}_MXX [000.0000-000.5000]: [LAUGHTER]"]
        lines += [f"{dialog}_{s} [{1.5 * i:07.4f}-{1.5 * i + 1:07.4f}]: {t}"
                  for i, (s, _, t) in enumerate(utts)]
        (trans_dir / f"{dialog}.txt").write_text("\n".join(lines) + "\n")
        for i, (s, _, t) in enumerate(utts):
            write_wav(sess / "sentences" / "wav" / dialog / f"{dialog}_{s}.wav", seed=10 * n + i)
            if f"{dialog}_{s}" not in NO_WDSEG:
                wdseg = sess / "sentences" / "ForcedAlignment" / dialog / f"{dialog}_{s}.wdseg"
                wdseg.parent.mkdir(parents=True, exist_ok=True)
                wdseg.write_text("\n".join(wdseg_lines(t)[0]) + "\n")
    return root


@pytest.fixture
def iemocap_root(tmp_path) -> Path:
    return make_iemocap(tmp_path / "IEMOCAP_full_release")


@pytest.fixture
def iemocap_expected() -> list:
    """``(id, label, speaker, session, text)`` of the records read_iemocap must return, in order."""
    return list(EXPECTED)


@pytest.fixture(name="wdseg_lines")
def wdseg_lines_fixture():
    """``wdseg_lines(text) -> (lines of a .wdseg file, expected words)``."""
    return wdseg_lines


@pytest.fixture
def iemocap_words() -> dict:
    """Utterance id -> the words ``read_iemocap`` must give it (None: no .wdseg file)."""
    return {utt: None if utt in NO_WDSEG else tuple(wdseg_lines(text)[1]) for utt, _, _, _, text in EXPECTED}


@pytest.fixture
def make_wav():
    """``make_wav(path, seconds=0.2, sample_rate=16000, seed=0)`` writes a noise wav and returns its path."""
    return write_wav
