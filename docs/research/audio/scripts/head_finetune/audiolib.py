"""Shared helpers for the issue-16 study: decode/resample with PyAV, codec round trips, AASIST scoring."""
import io, os, time
import numpy as np
import av
import onnxruntime as ort

SR = 16000
WIN = 64600
W = "/work/shared/weights/aasist"


def decode(path_or_bytes, sr=SR):
    """Decode any audio to mono float32 at `sr` with PyAV's resampler."""
    src = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, (bytes, bytearray)) else path_or_bytes
    out = []
    with av.open(src) as c:
        st = c.streams.audio[0]
        rs = av.AudioResampler(format="flt", layout="mono", rate=sr)
        for fr in c.decode(st):
            for f in rs.resample(fr):
                out.append(f.to_ndarray().reshape(-1))
        for f in rs.resample(None):
            out.append(f.to_ndarray().reshape(-1))
    return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)


def encode_roundtrip(x, codec, bitrate, sr_in=SR):
    """Encode mono float32 x (sr_in) with codec at bitrate (48 kHz, as in uploaded video), decode back to 16 kHz."""
    fmt, cname, ofmt = {"aac": ("mp4", "aac", "fltp"), "opus": ("webm", "libopus", "flt")}[codec]
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as oc:
        st = oc.add_stream(cname, rate=48000)
        st.bit_rate = bitrate
        st.layout = "mono"
        rs = av.AudioResampler(format=ofmt, layout="mono", rate=48000)
        frame = av.AudioFrame.from_ndarray(x.reshape(1, -1).astype(np.float32), format="flt", layout="mono")
        frame.sample_rate = sr_in
        frames = rs.resample(frame) + rs.resample(None)
        # re-chunk into codec frame sizes
        data = np.concatenate([f.to_ndarray().reshape(-1) for f in frames]).astype(np.float32)
        fs = st.codec_context.frame_size or 1024
        pts = 0
        for i in range(0, len(data), fs):
            chunk = data[i:i + fs]
            if len(chunk) < fs:
                chunk = np.pad(chunk, (0, fs - len(chunk)))
            f = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format=ofmt, layout="mono")
            f.sample_rate = 48000
            f.pts = pts
            pts += fs
            for p in st.encode(f):
                oc.mux(p)
        for p in st.encode(None):
            oc.mux(p)
    return decode(buf.getvalue())


def add_noise(x, snr_db, rng):
    p = float(np.mean(x ** 2)) + 1e-12
    n = rng.standard_normal(len(x)).astype(np.float32)
    # pinkish: smooth white noise a bit
    n = np.convolve(n, np.ones(4, np.float32) / 4, mode="same")
    n *= np.sqrt(p / (10 ** (snr_db / 10)) / (np.mean(n ** 2) + 1e-12))
    return (x + n).astype(np.float32)


def session(name, threads=1):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(os.path.join(W, name + ".onnx"), so, providers=["CPUExecutionProvider"])


def windows(x, n=3):
    """n windows of WIN samples spread over x (tile if short), as the reference pads by repetition."""
    if len(x) < WIN:
        reps = int(np.ceil(WIN / max(len(x), 1)))
        return np.tile(x, reps)[:WIN][None]
    starts = np.linspace(0, len(x) - WIN, n).astype(int) if n > 1 else [0]
    starts = sorted(set(starts))
    return np.stack([x[s:s + WIN] for s in starts])


def p_spoof(sess, batch):
    lg = sess.run(None, {sess.get_inputs()[0].name: batch.astype(np.float32)})[0]
    e = np.exp(lg - lg.max(1, keepdims=True))
    return (e / e.sum(1, keepdims=True))[:, 0], lg
