"""Dataset readers (IEMOCAP, MMSA pickles, generic manifests, a synthetic corpus), word alignments, the
feature cache and torch ``Dataset``s (SPEC §6). Feature extraction itself lives in ``mfdr.features``."""

from .alignment import AlignmentError, read_alignment, token_starts
from .cache import CacheConfigError, CacheWriter, FeatureCache, check_forced_alignment, config_hash
from .dataset import FeatureDataset, MMSADataset, collate, feature_stats, make_collate
from .iemocap import IEMOCAP_DROPPED, IEMOCAP_LABELS, read_iemocap
from .manifest import EMOTIONS, DataError, Record, Records, read_manifest, write_manifest
from .mmsa import MMSASplit, read_mmsa
from .synthetic import EspeakNotFoundError, make_synthetic_corpus, plan_corpus

__all__ = [
    "EMOTIONS", "IEMOCAP_DROPPED", "IEMOCAP_LABELS", "AlignmentError", "CacheConfigError", "CacheWriter",
    "DataError", "check_forced_alignment", "read_alignment", "token_starts",
    "EspeakNotFoundError", "FeatureCache", "FeatureDataset", "MMSADataset", "MMSASplit", "Record", "Records",
    "collate", "config_hash", "feature_stats", "make_collate", "make_synthetic_corpus", "plan_corpus",
    "read_iemocap", "read_manifest", "read_mmsa", "write_manifest",
]
