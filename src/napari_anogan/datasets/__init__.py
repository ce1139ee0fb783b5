"""Data sets made here: synthetic retinal OCT volumes with known lesions (:mod:`.synthetic`)."""
