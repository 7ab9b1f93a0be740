"""`trtalk serve`: the avatar in a web page over WebRTC; every session's frames batched on one
inference worker (`trtalk.serve.scheduler`). Importing this package imports neither aiohttp nor
aiortc: `trtalk.serve.app` and `trtalk.serve.tracks` do, and only `trtalk serve` loads them."""
