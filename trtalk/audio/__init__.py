"""trtalk.audio: decode audio files and compute the PC-AVS mel features.

``load_audio`` gives a 16 kHz mono float32 wave; ``mel_spectrogram`` (or the
chunk-by-chunk ``StreamingMel``) turns it into ``mel_tf`` (time x freq, 100
frames/s); ``mel_windows`` cuts the per-video-frame (1, 80, 20) network inputs;
``SampleQueue`` queues live audio chunks and hands them out in fixed blocks.
"""

from trtalk.audio import mel
from trtalk.audio.decode import audio_duration, load_audio
from trtalk.audio.fifo import SampleQueue
from trtalk.audio.mel import (
    MEL_WINDOW_FRAMES,
    MelConfig,
    StreamingMel,
    audio_lookahead_s,
    lws_analysis_window,
    mel_spectrogram,
    mel_windows,
    num_video_frames,
    rms_gain,
    slaney_mel_filterbank,
    window_start,
)

__all__ = ["SampleQueue", "audio_duration", "load_audio", *mel.__all__]
