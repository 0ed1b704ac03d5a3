"""The outputs radiologists see: SR (TID 1500), GSPS and a preview PNG, built with highdicom."""
