"""A LiveKit Agents voice agent with a trtalk face, dispatched by LiveKit to `trtalk livekit-worker`.

Two processes, as LiveKit's own avatar plugins work (and no LiveKit server can be installed on
trtalk's CI machines, so this runs against your LiveKit server or LiveKit Cloud):

    # on each GPU machine (or a CPU box for the warp avatar): the avatar worker
    export LIVEKIT_URL=wss://... LIVEKIT_API_KEY=... LIVEKIT_API_SECRET=...
    trtalk livekit-worker --face me.jpg --max-avatars 16

    # the agent (this file); its audio goes to the avatar, the avatar publishes face and voice
    python examples/livekit_avatar.py dev

The agent starts `TrtalkAvatarSession`, which asks LiveKit to dispatch the agent name
``trtalk-avatar`` into the room. LiveKit hands that job to the least-loaded registered
`trtalk livekit-worker` (each reports avatars / --max-avatars as its load); the worker joins the
room as the avatar, receives the agent's speech over a data stream and publishes the lip-synced
video and the same audio on the agent's behalf. All avatars on one worker share one batch
scheduler (one model, batched across rooms).

The STT/LLM/TTS here are LiveKit Inference's; any plugins work. Without a LiveKit server, the
video generator itself is exercised by tests/test_agents.py with LiveKit's rtc.AudioFrame.
"""

from __future__ import annotations

from livekit.agents import Agent, AgentServer, AgentSession, JobContext, cli, inference

from trtalk.integrations.livekit import TrtalkAvatarSession

server = AgentServer()


@server.rtc_session()
async def entrypoint(ctx: JobContext) -> None:
    await ctx.connect()
    session = AgentSession(stt=inference.STT("deepgram/nova-3"), llm=inference.LLM("openai/gpt-4.1-mini"),
                           tts=inference.TTS("cartesia/sonic-3"))
    avatar = TrtalkAvatarSession()  # dispatches `trtalk livekit-worker`'s avatar into this room
    await avatar.start(session, room=ctx.room)
    await session.start(agent=Agent(instructions="You are a friendly assistant with a face."), room=ctx.room)
    await session.generate_reply(instructions="Greet the user.")


if __name__ == "__main__":
    cli.run_app(server)
