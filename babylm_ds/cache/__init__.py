"""Offline teacher-logit cache: top-k + tail per token, sharded, checksummed, resumable."""
from .format import FORMAT_VERSION, check_compatible, load_manifest, verify
from .reader import TeacherCache
from .teachers import check_teacher, combined_logits, load_teacher, load_teachers, normalise_weights, teacher_info
from .writer import claim_cache, write_cache

__all__ = ["FORMAT_VERSION", "TeacherCache", "check_compatible", "check_teacher", "claim_cache", "combined_logits",
           "load_manifest", "load_teacher", "load_teachers", "normalise_weights", "teacher_info", "verify",
           "write_cache"]
