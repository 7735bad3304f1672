"""Audio Flamingo 3 and Music Flamingo, from their published Hugging Face folders: family.py reads them,
graphs.py holds the two audio graphs, writer.py writes random folders in their layout."""

from .family import AudioFlamingo3, MusicFlamingo

__all__ = ["AudioFlamingo3", "MusicFlamingo"]
