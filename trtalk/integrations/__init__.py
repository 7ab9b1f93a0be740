"""Voice-agent frameworks on the trtalk engine: Pipecat (`pipecat`), LiveKit Agents (`livekit`,
`livekit_cli`), both on `face.AgentFace` and the process-wide shared model (`shared`)."""
