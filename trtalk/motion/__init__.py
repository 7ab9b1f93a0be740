"""Motion generated on the stream's clock: blinks (`blink`) and speech-driven head motion."""
