import os, importlib.util
import numpy as np
import onnxruntime as ort
DATA = os.path.join(importlib.util.find_spec("silero_vad").submodule_search_locations[0], "data")

class Silero:
    def __init__(self):
        so = ort.SessionOptions(); so.intra_op_num_threads = 1; so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.s = ort.InferenceSession(os.path.join(DATA, "silero_vad_16k_sequence.onnx"), so, providers=["CPUExecutionProvider"])
    def probs(self, x):
        F, C = 512, 64
        n = (len(x) + F - 1) // F
        fr = np.zeros((n, F), np.float32); fr.reshape(-1)[:len(x)] = x
        ctx = np.zeros((n, C), np.float32); ctx[1:] = fr[:-1, -C:]
        h = np.zeros((1, 1, 128), np.float32); c = np.zeros((1, 1, 128), np.float32); out = []
        blk = np.concatenate([ctx, fr], 1)
        for i in range(0, n, 512):
            p, h, c = self.s.run(["speech_probs", "hn", "cn"], {"input": blk[i:i + 512], "h": h, "c": c})
            out.append(p)
        return np.concatenate(out).reshape(-1), F

    def speech_only(self, x, th=0.5, pad_frames=3, min_frames=8):
        """Concatenate speech frames (hangover-padded, short runs dropped)."""
        p, F = self.probs(x)
        m = p >= th
        # drop runs shorter than min_frames
        out = m.copy(); i = 0
        while i < len(m):
            if m[i]:
                j = i
                while j < len(m) and m[j]: j += 1
                if j - i < min_frames: out[i:j] = False
                i = j
            else: i += 1
        k = np.convolve(out.astype(int), np.ones(2 * pad_frames + 1, int), "same") > 0
        idx = np.repeat(k, F)[:len(x)]
        return x[idx[:len(x)]] if idx.any() else x[:0]
