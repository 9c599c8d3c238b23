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
generic manifest layout: ``<out>/wavs/<id>.wav`` (16 kHz mono), ``<out>/alignments/<id>.csv`` (each
word's exact timing, ``word,start,end``) and ``<out>/manifest.csv`` with ``id, wav, text, label,
speaker, alignment`` plus ``kind, text_emotion, prosody_emotion, voice``.

Word timings come from the synthesizer itself. ``engine="library"`` speaks each sentence through
libespeak-ng (ctypes; the same samples as the ``espeak-ng`` command) and reads its word and phoneme
events: a word starts at its word event and ends where the pause after its last phoneme begins.
``engine="per-word"`` (the fallback where the library cannot be loaded) speaks each word alone with the
``espeak-ng`` command and joins the words, trimmed of silence, with the prosody's word gap: the timings
are exact by construction, the sentence intonation is lost. ``"auto"`` takes the library when it loads.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import os
import random
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..errors import DataError, DependencyError
from .alignment import write_alignment_csv
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
ENGINES = ("auto", "library", "per-word")


class EspeakNotFoundError(DependencyError):
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


# ----------------------------------------------------------------------------- libespeak-ng (ctypes)

# Run in a fresh interpreter per utterance (``python -S -c``): libespeak-ng keeps state from one
# synthesis to the next (the same text comes out a few samples different the second time), so each
# utterance gets a new process, as the espeak-ng command does; the samples then equal the command's.
# argv: library, voice, rate, amplitude, pitch, word gap, text. stdout: one JSON line
# {"sample_rate", "events": [[type, text position (1-based), sample, phoneme]]}, then int16 samples.
_LIB_SCRIPT = r"""
import ctypes, json, sys
lib_path, voice, text = sys.argv[1], sys.argv[2], sys.argv[7]
class Event(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", ctypes.c_char * 8)]
CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(Event))
lib = ctypes.CDLL(lib_path)
lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                             ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
sr = lib.espeak_Initialize(2, 0, None, 1)          # AUDIO_OUTPUT_SYNCHRONOUS, phoneme events
if sr <= 0:
    sys.exit(f"espeak_Initialize failed ({sr}): is espeak-ng-data installed?")
chunks, events = [], []
def collect(wav, n, ev):
    if n > 0:
        chunks.append(ctypes.string_at(wav, 2 * n))
    i = 0
    while ev[i].type != 0:
        e = ev[i]
        name = bytes(e.id).split(b"\0")[0].decode("ascii", "replace") if e.type == 7 else ""
        events.append([e.type, e.text_position, e.sample, name])
        i += 1
    return 0
callback = CALLBACK(collect)
lib.espeak_SetSynthCallback(callback)
if lib.espeak_SetVoiceByName(voice.encode()) != 0:
    sys.exit(f"libespeak-ng does not know the voice {voice!r}")
for param, value in zip((1, 2, 3, 7), sys.argv[3:7]):  # rate, volume, pitch, word gap: as the command sets them
    lib.espeak_SetParameter(param, int(value), 0)
data = text.encode("utf-8")
err = lib.espeak_Synth(data, len(data) + 1, 0, 1, 0, 0x0100 | 0x1000, None, None)  # espeak-ng's flags
lib.espeak_Synchronize()
if err != 0 or not chunks:
    sys.exit(f"espeak_Synth failed (error {err})")
out = sys.stdout.buffer
out.write(json.dumps({"sample_rate": sr, "events": events}).encode() + b"\n")
out.write(b"".join(chunks))
"""
_EV_WORD, _EV_PHONEME = 1, 7
_LIB_NAMES = ("libespeak-ng.so.1", "libespeak-ng.so", "libespeak-ng.1.dylib", "libespeak-ng.dylib",
              "libespeak-ng.dll")
_library: list = []      # [path or None, why not] once looked for


def find_espeak_library() -> str | None:
    """The libespeak-ng shared library that loads here (and has ``espeak_Synth``), or None."""
    if not _library:
        found, errors = None, []
        for name in [n for n in (ctypes.util.find_library("espeak-ng"),) if n] + list(_LIB_NAMES):
            try:
                ctypes.CDLL(name).espeak_Synth  # noqa: B018  (the symbol must exist)
                found = name
                break
            except (OSError, AttributeError) as e:
                errors.append(f"{name}: {e}")
        _library[:] = [found, "; ".join(errors)]
    return _library[0]


def speak_with_library(text: str, voice: str, prosody: dict, library: str | None = None
                       ) -> tuple[np.ndarray, int, list]:
    """``(samples (n,) float32, sample rate, words)`` of ``text`` spoken by libespeak-ng with ``voice`` and
    ``prosody`` (the ``espeak-ng -v -p -s -a -g`` settings), in a fresh process; ``words``: ``(word,
    start_s, end_s)`` from the library's word and phoneme events (``words_from_events``)."""
    library = library or find_espeak_library()
    if library is None:
        raise EspeakNotFoundError(f"libespeak-ng could not be loaded ({_library[1]}); use engine='per-word' or "
                                  "install the library (Debian/Ubuntu: apt-get install libespeak-ng1)")
    args = [str(prosody[k]) for k in ("rate", "amplitude", "pitch", "gap")]
    res = subprocess.run([sys.executable, "-S", "-c", _LIB_SCRIPT, library, voice, *args, text],
                         capture_output=True)
    if res.returncode != 0:
        raise DataError(f"libespeak-ng failed to speak {text!r} with voice {voice!r} (exit {res.returncode}): "
                        f"{res.stderr.decode(errors='replace').strip()[-500:]}")
    head, _, pcm = res.stdout.partition(b"\n")
    meta = json.loads(head)
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
    sr = int(meta["sample_rate"])
    return samples, sr, words_from_events(text, meta["events"], len(samples), sr)


def _clean(span: str) -> str:
    """``span`` without edge punctuation, inner whitespace made single spaces (``"in the"``)."""
    words = []
    for raw in span.split():
        a, b = 0, len(raw)
        while a < b and not raw[a].isalnum():
            a += 1
        while b > a and not raw[b - 1].isalnum():
            b -= 1
        if a < b:
            words.append(raw[a:b])
    return " ".join(words)


def words_from_events(text: str, events: list, n_samples: int, sr: int) -> list:
    """Words from espeak-ng's events ``(type, text position (1-based), sample, phoneme)``.

    Each word event starts a word, named by the text from its position to the next word event's (so a
    group espeak-ng speaks as one, like ``"in the"``, stays one entry); the word ends at the first pause
    phoneme (``_``, ``_:``) after it, else where the next word starts (or the audio ends). Word events
    with no text position (espeak-ng emits one at some clause ends) are ignored.
    """
    marks = [(k, e) for k, e in enumerate(events) if e[0] == _EV_WORD and e[1] >= 1]
    words = []
    for m, (k, (_, pos, sample, _)) in enumerate(marks):
        if m + 1 < len(marks):
            next_k, (_, next_pos, next_sample, _) = marks[m + 1]
        else:
            next_k, next_pos, next_sample = len(events), len(text) + 1, n_samples
        pause = next((e[2] for e in events[k + 1: next_k]
                      if e[0] == _EV_PHONEME and e[3].startswith("_") and e[2] > sample), None)
        word = _clean(text[pos - 1: next_pos - 1])
        if word:
            end = min(pause if pause is not None else next_sample, n_samples)
            words.append((word, sample / sr, max(end, sample) / sr))
    return words


# ----------------------------------------------------------------------------- synthesis

def _run_espeak(espeak: str, utt: dict, text: str, tmp: Path) -> tuple[np.ndarray, int]:
    """The espeak-ng command speaking ``text`` with the utterance's voice and prosody."""
    import soundfile as sf

    p = utt["prosody"]
    cmd = [espeak, "-v", utt["voice"], "-p", str(p["pitch"]), "-s", str(p["rate"]), "-a", str(p["amplitude"]),
           "-g", str(p["gap"]), "-w", str(tmp), "--", text]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0 or not tmp.is_file():
        raise DataError(f"espeak-ng failed for {utt['id']} (exit {res.returncode}): {res.stderr.strip()}\n"
                        f"command: {' '.join(cmd)}")
    x, sr = sf.read(str(tmp), dtype="float32")
    tmp.unlink()
    return x, sr


def _trim(x: np.ndarray, rel: float = 0.01) -> np.ndarray:
    """``x`` without the leading and trailing samples quieter than ``rel`` of its peak."""
    loud = np.flatnonzero(np.abs(x) > rel * max(float(np.abs(x).max(initial=0.0)), 1e-9))
    return x[loud[0]: loud[-1] + 1] if loud.size else x[:0]


def _per_word(espeak: str, utt: dict, tmp: Path) -> tuple[np.ndarray, int, list]:
    """Each word spoken alone by the espeak-ng command, trimmed of silence, joined by 50 ms plus the
    prosody's word gap (100 ms of silence before and after)."""
    pieces, words, sr, t = [], [], None, 0
    for k, raw in enumerate(utt["text"].split()):
        word = _clean(raw)
        if not word:
            continue
        x, sr = _run_espeak(espeak, utt, word, tmp.with_suffix(f".{k}.wav"))
        x = _trim(x)
        gap = np.zeros(int(sr * (0.05 + 0.01 * utt["prosody"]["gap"]) if pieces else sr * 0.1), np.float32)
        pieces += [gap, x]
        t += len(gap)
        words.append((word, t / sr, (t + len(x)) / sr))
        t += len(x)
    if sr is None:
        raise DataError(f"utterance {utt['id']}: no word to speak in {utt['text']!r}")
    pieces.append(np.zeros(int(sr * 0.1), np.float32))
    return np.concatenate(pieces), sr, words


def _synthesize(espeak: str, utt: dict, wav: Path, sample_rate: int, engine: str = "auto") -> list:
    """Speak one utterance and store it as 16-bit mono at ``sample_rate``; returns its words
    ``[(word, start_s, end_s)]`` (``engine``: ``"library"``, ``"per-word"`` or ``"auto"``, see the module)."""
    import soundfile as sf

    from mfdr.features import resample

    if engine == "library" or (engine == "auto" and find_espeak_library() is not None):
        x, sr, words = speak_with_library(utt["text"], utt["voice"], utt["prosody"])
    else:
        x, sr, words = _per_word(espeak, utt, wav.with_suffix(".espeak.wav"))
    y = resample(x, sr, sample_rate)
    sf.write(str(wav), y, sample_rate, subtype="PCM_16")
    duration = len(y) / sample_rate
    return [(w, min(s, duration), min(e, duration)) for w, s, e in words]


def make_synthetic_corpus(out_dir, n_utterances: int = 800, *, speakers: int = 8, seed: int = 0,
                          sample_rate: int = 16000, workers: int | None = None,
                          manifest: str = "manifest.csv", espeak: str | None = None,
                          progress: bool = True, engine: str = "auto") -> Path:
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
        engine: how the words' timings are known: ``"library"`` (libespeak-ng's word events),
            ``"per-word"`` (each word spoken alone and joined) or ``"auto"`` (the library when it loads).
    Raises:
        EspeakNotFoundError: with install instructions, when espeak-ng is missing.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    exe = find_espeak(espeak)
    if engine == "auto" and find_espeak_library() is None:
        log.warning("libespeak-ng could not be loaded (%s): each word is spoken alone for its timing "
                    "(engine='per-word')", _library[1])
    out = Path(out_dir)
    for sub in ("wavs", "alignments"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    plan = plan_corpus(n_utterances, speakers=speakers, seed=seed)
    from ..progress import bar as progress_bar

    def run(utt):
        words = _synthesize(exe, utt, out / "wavs" / f"{utt['id']}.wav", sample_rate, engine)
        write_alignment_csv(words, out / "alignments" / f"{utt['id']}.csv")

    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 2) as pool:
        for _ in progress_bar(pool.map(run, plan), total=len(plan), enabled=progress, desc="espeak-ng",
                      unit="utt"):
            pass
    rows = [{**{k: v for k, v in u.items() if k != "prosody"}, "wav": f"wavs/{u['id']}.wav",
             "alignment": f"alignments/{u['id']}.csv"} for u in plan]
    path = write_manifest(rows, out / manifest)
    log.info("make_synthetic_corpus: %d utterances, %d speakers -> %s", len(rows), speakers, path)
    return path
