"""A synthetic acted-emotion corpus spoken by espeak-ng, where neither modality alone suffices.

Each utterance has a *text emotion* (what the words say) and a *prosody emotion* (pitch, rate,
volume and word gaps given to espeak-ng). The label follows one rule: the prosody's emotion when it
is not neutral, otherwise the words' emotion. Four kinds of utterances mix the two:

    kind        words      prosody    label      for label
    neutral     neutral    neutral    neutral    neutral
    lexical     E          neutral    E          happy / angry / sad: the words decide
    prosodic    neutral    E          E          the prosody decides
    ironic      E' != E    E          E          the two disagree and the prosody wins
    congruent   E          E          E

So a text-only model cannot tell ``prosodic`` from ``neutral`` and is fooled by ``ironic``; an
audio-only model cannot tell ``lexical`` from ``neutral``. Speakers are espeak-ng voices (≥ 8),
each with its own pitch and rate offsets; labels are balanced per speaker. The output has the
generic manifest layout: ``<out>/wavs/<id>.wav`` (16 kHz mono) and ``<out>/manifest.csv`` with
``id, wav, text, label, speaker`` plus ``kind, text_emotion, prosody_emotion, voice``.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .manifest import EMOTIONS, write_manifest

log = logging.getLogger("mfdr.data")

VOICES = ("en-us+m1", "en-us+f2", "en+m3", "en+f3", "en-gb-scotland+m2", "en-029+f4",
          "en-us-nyc+m4", "en-gb-x-rp+f1", "en-gb-x-gbclan+m5", "en-gb-x-gbcwmd+f5", "en-us+m7", "en+f4")

# espeak-ng settings per emotion: pitch (-p, 0-99), rate (-s, words/min), amplitude (-a, 0-200),
# gap between words (-g, units of 10 ms).
PROSODY = {
    "neutral": {"pitch": 50, "rate": 160, "amplitude": 100, "gap": 0},
    "happy": {"pitch": 78, "rate": 195, "amplitude": 130, "gap": 0},
    "angry": {"pitch": 38, "rate": 205, "amplitude": 175, "gap": 0},
    "sad": {"pitch": 22, "rate": 115, "amplitude": 55, "gap": 4},
}

SENTENCES = {
    "neutral": (
        "The meeting is on Tuesday at noon.", "Please put the files on the second shelf.",
        "The train leaves from platform four.", "I moved the chairs into the other room.",
        "The report has twelve pages and two tables.", "We usually buy bread at the corner shop.",
        "The bus stops here every twenty minutes.", "She wrote the address on a small card.",
        "The library closes at six on weekdays.", "He parked the car behind the building.",
        "The box contains three cables and a charger.", "My sister lives in the next town.",
        "The form asks for your name and your date of birth.", "There is a printer on the third floor.",
        "They painted the fence last weekend.", "The lecture starts after the coffee break.",
    ),
    "happy": (
        "I am so happy, this is wonderful news!", "What a beautiful day, I love it!",
        "We won the prize, I am thrilled!", "This is the best present I have ever had.",
        "I am delighted that you came, thank you so much.", "Everything worked out perfectly, how lovely!",
        "I passed the exam, I feel fantastic!", "You made my day, I am so glad.",
        "Hooray, we are going on holiday!", "That was brilliant, I really enjoyed it.",
        "I am overjoyed to see you again.", "What great fun, let us do it again!",
    ),
    "angry": (
        "I am furious, you lied to me again!", "Get out of my office right now!",
        "This is outrageous and I will not accept it.", "Stop wasting my time, I am sick of this!",
        "How dare you talk to me like that!", "I hate it when you ignore me.",
        "You broke it again, I am so angry!", "This is unacceptable, I demand an answer!",
        "Shut up and listen to me for once!", "I have had enough of your stupid excuses!",
        "Do not ever touch my things again!", "You ruined everything, I am livid!",
    ),
    "sad": (
        "I miss her so much, I feel so alone.", "Nobody came to my party, I am heartbroken.",
        "My old dog died this morning.", "I lost my job and I do not know what to do.",
        "Everything feels empty and hopeless now.", "I am so sorry, I failed you again.",
        "He left and he is never coming back.", "I cried all night, I feel miserable.",
        "It is over, there is nothing left for me.", "I feel so lonely since she moved away.",
        "We had to say goodbye forever today.", "I am tired and sad and I want to give up.",
    ),
}

KINDS = {"lexical": 0.3, "prosodic": 0.3, "ironic": 0.25, "congruent": 0.15}


class EspeakNotFoundError(RuntimeError):
    """espeak-ng is not installed (or not at the given path)."""


def find_espeak(espeak: str | None = None) -> str:
    """The espeak-ng executable, or ``EspeakNotFoundError`` saying how to install it."""
    name = espeak or os.environ.get("MFDR_ESPEAK", "espeak-ng")
    path = shutil.which(name)
    if path is None:
        raise EspeakNotFoundError(
            f"espeak-ng was not found (looked for {name!r} on PATH). The synthetic corpus needs it: "
            "Debian/Ubuntu: sudo apt-get install espeak-ng; Fedora: sudo dnf install espeak-ng; "
            "macOS: brew install espeak-ng; conda: conda install -c conda-forge espeak-ng. "
            "Or pass espeak='/path/to/espeak-ng' (or set MFDR_ESPEAK).")
    return path


def _speaker_offsets(rng: random.Random, n: int) -> list[dict]:
    """Per-speaker voice and prosody offsets (pitch ±8, rate ±12 %)."""
    return [{"voice": VOICES[i], "pitch": rng.randint(-8, 8), "rate": rng.uniform(0.88, 1.12)}
            for i in range(n)]


def _prosody(emotion: str, spk: dict, rng: random.Random) -> dict:
    """espeak-ng settings for one utterance: the emotion's, moved by speaker and a little jitter."""
    p = PROSODY[emotion]
    return {"pitch": min(99, max(0, p["pitch"] + spk["pitch"] + rng.randint(-4, 4))),
            "rate": int(p["rate"] * spk["rate"] * rng.uniform(0.94, 1.06)),
            "amplitude": min(200, max(10, p["amplitude"] + rng.randint(-10, 10))),
            "gap": p["gap"]}


def _plan_one(i: int, label: str, spk_index: int, spk: dict, rng: random.Random) -> dict:
    """Choose the kind, words and prosody of utterance ``i`` with label ``label``."""
    if label == "neutral":
        kind, text_emo, pros_emo = "neutral", "neutral", "neutral"
    else:
        kind = rng.choices(list(KINDS), weights=list(KINDS.values()))[0]
        others = [e for e in EMOTIONS if e not in ("neutral", label)]
        text_emo = {"lexical": label, "prosodic": "neutral", "ironic": rng.choice(others),
                    "congruent": label}[kind]
        pros_emo = "neutral" if kind == "lexical" else label
    return {"id": f"spk{spk_index:02d}_{i:05d}", "text": rng.choice(SENTENCES[text_emo]), "label": label,
            "speaker": f"spk{spk_index:02d}", "kind": kind, "text_emotion": text_emo,
            "prosody_emotion": pros_emo, "voice": spk["voice"], "prosody": _prosody(pros_emo, spk, rng)}


def plan_corpus(n_utterances: int = 800, *, speakers: int = 8, seed: int = 0) -> list[dict]:
    """The utterances to synthesize (no audio yet); deterministic given the arguments.

    Utterance ``i`` goes to speaker ``s = i % speakers`` with label ``EMOTIONS[(i // speakers + s) % 4]``:
    labels are balanced within each speaker (every 4 rounds) and across speakers (every round).
    """
    if not 1 <= speakers <= len(VOICES):
        raise ValueError(f"speakers must be in 1..{len(VOICES)} (the voices available), got {speakers}")
    if n_utterances < 1:
        raise ValueError(f"n_utterances must be ≥ 1, got {n_utterances}")
    rng = random.Random(seed)
    spk = _speaker_offsets(rng, speakers)
    return [_plan_one(i, EMOTIONS[(i // speakers + i % speakers) % len(EMOTIONS)], i % speakers,
                      spk[i % speakers], rng) for i in range(n_utterances)]


def _synthesize(espeak: str, utt: dict, wav: Path, sample_rate: int) -> None:
    """Run espeak-ng for one utterance and store it as 16-bit mono at ``sample_rate``."""
    import soundfile as sf

    from mfdr.features import resample

    p, tmp = utt["prosody"], wav.with_suffix(".espeak.wav")
    cmd = [espeak, "-v", utt["voice"], "-p", str(p["pitch"]), "-s", str(p["rate"]), "-a", str(p["amplitude"]),
           "-g", str(p["gap"]), "-w", str(tmp), "--", utt["text"]]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0 or not tmp.is_file():
        raise RuntimeError(f"espeak-ng failed for {utt['id']} (exit {res.returncode}): {res.stderr.strip()}\n"
                           f"command: {' '.join(cmd)}")
    x, sr = sf.read(str(tmp), dtype="float32")
    tmp.unlink()
    sf.write(str(wav), resample(x, sr, sample_rate), sample_rate, subtype="PCM_16")


def make_synthetic_corpus(out_dir, n_utterances: int = 800, *, speakers: int = 8, seed: int = 0,
                          sample_rate: int = 16000, workers: int | None = None,
                          manifest: str = "manifest.csv", espeak: str | None = None,
                          progress: bool = True) -> Path:
    """Synthesize the corpus into ``out_dir`` and return the manifest's path.

    Args:
        out_dir: output folder (``wavs/`` and the manifest are (re)written).
        n_utterances: number of utterances (about 3 s each).
        speakers: espeak-ng voices used as speakers (1..12; ≥ 4 for speaker-independent folds).
        seed: everything (words, kinds, prosody jitter) follows from it.
        sample_rate: of the written wavs.
        workers: espeak-ng processes run in parallel (default: CPU count).
        manifest: its file name, ``.csv`` or ``.jsonl``.
        espeak: the espeak-ng executable (default ``$MFDR_ESPEAK`` or ``espeak-ng`` on PATH).
    Raises:
        EspeakNotFoundError: with install instructions, when espeak-ng is missing.
    """
    exe = find_espeak(espeak)
    out = Path(out_dir)
    (out / "wavs").mkdir(parents=True, exist_ok=True)
    plan = plan_corpus(n_utterances, speakers=speakers, seed=seed)
    from tqdm import tqdm

    def run(utt):
        _synthesize(exe, utt, out / "wavs" / f"{utt['id']}.wav", sample_rate)

    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 2) as pool:
        for _ in tqdm(pool.map(run, plan), total=len(plan), disable=not progress, desc="espeak-ng",
                      unit="utt"):
            pass
    rows = [{**{k: v for k, v in u.items() if k != "prosody"}, "wav": f"wavs/{u['id']}.wav"} for u in plan]
    path = write_manifest(rows, out / manifest)
    log.info("make_synthetic_corpus: %d utterances, %d speakers -> %s", len(rows), speakers, path)
    return path
