"""Dataset readers (IEMOCAP, MMSA pickles, generic manifests, a synthetic corpus), the feature
cache and torch ``Dataset``s (SPEC §6). Feature extraction itself lives in ``mfdr.features``."""

from .cache import CacheConfigError, CacheWriter, FeatureCache, config_hash
from .dataset import FeatureDataset, MMSADataset, collate, feature_stats, make_collate
from .iemocap import IEMOCAP_DROPPED, IEMOCAP_LABELS, read_iemocap
from .manifest import EMOTIONS, DataError, Record, Records, read_manifest, write_manifest
from .mmsa import MMSASplit, read_mmsa
from .synthetic import EspeakNotFoundError, make_synthetic_corpus, plan_corpus

__all__ = [
    "EMOTIONS", "IEMOCAP_DROPPED", "IEMOCAP_LABELS", "CacheConfigError", "CacheWriter", "DataError",
    "EspeakNotFoundError", "FeatureCache", "FeatureDataset", "MMSADataset", "MMSASplit", "Record", "Records",
    "collate", "config_hash", "feature_stats", "make_collate", "make_synthetic_corpus", "plan_corpus",
    "read_iemocap", "read_manifest", "read_mmsa", "write_manifest",
]
