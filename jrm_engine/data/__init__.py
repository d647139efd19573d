from .records import Candidate, PreferencePair, PREFERENCES

__all__ = ["Candidate", "PreferencePair", "PREFERENCES"]
