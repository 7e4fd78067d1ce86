"""MMFace-DiT trainer."""
