// trtalk serve page: pick or upload an avatar, send the microphone (and camera), show the avatar.
// No build step, no dependencies. window.trtalk exposes the state the browser tests read.
"use strict";
(function () {
  const token = new URLSearchParams(location.search).get("token") || "";
  const $ = (id) => document.getElementById(id);
  const state = { frames: 0, decoded: 0, samples: [], stats: null, error: null, session: null, ready: false };
  window.trtalk = state;
  let pc = null, channel = null, local = null, config = null;

  function api(path, opts) {
    opts = opts || {};
    opts.headers = Object.assign({}, opts.headers || {}, token ? { "X-Trtalk-Token": token } : {});
    return fetch(path, opts).then(async (r) => {
      let body = null;
      try { body = await r.json(); } catch (e) { body = { error: "HTTP " + r.status }; }
      if (!r.ok) throw new Error(body.error || ("HTTP " + r.status));
      return body;
    });
  }
  function status(text) { $("status").textContent = text; }
  function error(text) { state.error = text; $("error").textContent = text || ""; }
  function fmt(d) { return d && d.p50 != null ? Math.round(d.p50) + " ms (p95 " + Math.round(d.p95) + ")" : "–"; }

  async function load() {
    try {
      config = await api("api/config");
    } catch (e) { error(e.message); return; }
    for (const a of config.avatars) $("avatar").add(new Option(a.label, a.id));
    for (const p of config.poses) $("pose").add(new Option(p.label, p.id));
    for (const m of config.mouths) $("mouth").add(new Option(m.label, m.id));
    for (const st of config.motion_styles || []) $("motion-style").add(new Option(st.label, st.id));
    showStyle();
    $("mouth-label").hidden = config.mouths.length < 2;
    $("model").textContent = "model: " + config.model + (config.random_weights ? " (random weights)" : "") +
      " · " + config.fps + " fps · room for " + config.room + " more session(s) (" + config.sessions + " of " + config.capacity_sessions + " running)";
    $("start").disabled = false;  // nothing to start before the settings are known
  }

  $("upload").addEventListener("change", async (ev) => {
    const file = ev.target.files[0];
    if (!file || !config) return;
    error(null);
    if (file.size > config.max_upload_bytes) { error("the photo is too large"); return; }
    status("checking the photo…");
    try {
      const r = await api("api/avatar", { method: "POST", body: file,
        headers: { "Content-Type": file.type || "application/octet-stream" } });
      const opt = new Option("uploaded: " + file.name, r.id);
      $("avatar").add(opt); $("avatar").value = r.id;
      status("photo ready");
    } catch (e) { error(e.message); status("upload refused"); }
  });

  // A motion style (`trtalk motion fit`) shapes the generated head motion: pose "auto" only.
  function showStyle() { $("style-box").hidden = !config || $("pose").value !== "auto"; }
  $("style-upload").addEventListener("change", async (ev) => {
    const file = ev.target.files[0];
    if (!file || !config) return;
    error(null);
    if (file.size > config.max_style_bytes) { error("that is too large for a motion style file"); return; }
    status("checking the motion style…");
    try {
      const r = await api("api/motion-style", { method: "POST", body: file,
        headers: { "Content-Type": "application/json" } });
      const opt = new Option("uploaded: " + r.name, r.id);
      $("motion-style").add(opt); $("motion-style").value = r.id;
      status("motion style ready");
    } catch (e) { error(e.message); status("style refused"); }
  });

  function watchFrames(video) {
    const canvas = document.createElement("canvas");
    canvas.width = 64; canvas.height = 64;
    const ctx = canvas.getContext("2d", { willReadFrequently: true });
    const onFrame = (now, meta) => {
      state.frames += 1;
      try {
        if (video.readyState < 2 || !video.videoWidth) throw new Error("no frame yet");
        ctx.drawImage(video, 0, 0, 64, 64);
        // mouth box (mean luma): where the server says the mouth is (the "ready" message), else
        // an aligned crop's, x 0.35-0.65, y 0.62-0.82
        const b = state.mouthBox || [0.35, 0.62, 0.65, 0.82];
        const x0 = Math.floor(b[0] * 64), y0 = Math.floor(b[1] * 64);
        const d = ctx.getImageData(x0, y0, Math.max(1, Math.ceil(b[2] * 64) - x0),
                                   Math.max(1, Math.ceil(b[3] * 64) - y0)).data;
        let s = 0;
        for (let i = 0; i < d.length; i += 4) s += 0.299 * d[i] + 0.587 * d[i + 1] + 0.114 * d[i + 2];
        state.samples.push({ t: now, rtp: meta.rtpTimestamp == null ? null : meta.rtpTimestamp,
                             mouth: s / (d.length / 4) });
        if (state.samples.length > 3000) state.samples.shift();
      } catch (e) { /* frame not drawable yet */ }
      video.requestVideoFrameCallback(onFrame);
    };
    video.requestVideoFrameCallback(onFrame);
  }

  // Lips from the camera read the frames the webcam pose tracks: the two choices go together.
  const choice = (list, id) => list.find((c) => c.id === id);
  const webcamPose = () => config.poses.find((p) => p.camera);
  $("mouth").addEventListener("change", () => {
    if (!config) return;
    const m = choice(config.mouths, $("mouth").value);
    if (m && m.camera && !choice(config.poses, $("pose").value).camera && webcamPose()) $("pose").value = webcamPose().id;
  });
  $("pose").addEventListener("change", () => {
    if (!config) return;
    const m = choice(config.mouths, $("mouth").value);
    if (m && m.camera && !choice(config.poses, $("pose").value).camera) $("mouth").value = config.mouths[0].id;
    showStyle();
  });

  async function start() {
    error(null);
    $("start").disabled = true;
    const pose = config.poses.find((p) => p.id === $("pose").value);
    try {
      local = await navigator.mediaDevices.getUserMedia({ audio: true, video: !!(pose && pose.camera) });
    } catch (e) { error("microphone/camera not allowed: " + e.message); $("start").disabled = false; return; }
    pc = new RTCPeerConnection();
    channel = pc.createDataChannel("control");
    channel.onmessage = (ev) => {
      const m = JSON.parse(ev.data);
      if (m.type === "ready") {
        state.session = m.session; state.ready = true; state.mouthBox = m.mouth_box || null; status("connected");
      }
      else if (m.type === "stats") {
        state.stats = m;
        $("latency").textContent = "latency: mic→frame " + fmt(m.mic_to_frame_ms) +
          " + audio lookahead " + Math.round(m.lookahead_ms || 0) + " ms";
        $("fps").textContent = m.frames + " frames, " + (m.fps || 0).toFixed(1) + " fps, " + m.dropped + " dropped";
      } else if (m.type === "error") { error(m.message); stop(false); }
      else if (m.type === "ended") { status("session ended"); stop(false); }
    };
    const audio = local.getAudioTracks()[0];
    pc.addTransceiver(audio, { direction: "sendrecv", streams: [local] });
    const cam = local.getVideoTracks()[0];
    if (cam) pc.addTransceiver(cam, { direction: "sendrecv", streams: [local] });
    else pc.addTransceiver("video", { direction: "recvonly" });
    const remote = new MediaStream();
    pc.ontrack = (ev) => { remote.addTrack(ev.track); $("video").srcObject = remote; };
    pc.onconnectionstatechange = () => {
      if (pc && pc.connectionState === "failed") { error("the connection failed"); stop(false); }
    };
    await pc.setLocalDescription(await pc.createOffer());
    await new Promise((resolve) => {
      if (pc.iceGatheringState === "complete") return resolve();
      pc.addEventListener("icegatheringstatechange", () => { if (pc.iceGatheringState === "complete") resolve(); });
      setTimeout(resolve, 3000);
    });
    status("connecting…");
    try {
      const answer = await api("api/offer", { method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ sdp: pc.localDescription.sdp, type: "offer", avatar: $("avatar").value,
                               pose: $("pose").value, mouth: $("mouth").value,
                               motion_style: $("pose").value === "auto" ? ($("motion-style").value || null) : null,
                               paste_back: $("paste").checked }) });
      await pc.setRemoteDescription(answer);
      $("stop").disabled = false;
    } catch (e) { error(e.message); status("refused"); stop(false); return; }
    watchFrames($("video"));
    // frames decoded, from WebRTC's own counters (counts in a background tab too)
    const mine = pc;
    const poll = setInterval(async () => {
      if (pc !== mine) { clearInterval(poll); return; }
      const report = await pc.getStats();
      report.forEach((r) => { if (r.type === "inbound-rtp" && r.kind === "video") state.decoded = r.framesDecoded || 0; });
    }, 250);
  }

  function stop(sayBye) {
    if (sayBye !== false && channel && channel.readyState === "open") channel.send(JSON.stringify({ type: "bye" }));
    if (pc) { const p = pc; pc = null; setTimeout(() => p.close(), 100); }
    if (local) { local.getTracks().forEach((t) => t.stop()); local = null; }
    $("start").disabled = false; $("stop").disabled = true;
  }
  state.stop = stop;
  $("start").addEventListener("click", start);
  $("stop").addEventListener("click", () => { stop(true); status("stopped"); });
  load();
})();
