"""FP32 enforcement, TTT-state statistics writer/reader, numerical health, the Textual monitor app."""
