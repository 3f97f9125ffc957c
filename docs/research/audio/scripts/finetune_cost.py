"""AASIST-L in PyTorch (reference class, ref/): .pth loads, parity with the ONNX reference logits, and the CPU
cost of one fine-tuning step (batch 8) at 64,600 and 32,000 samples, 1 thread; plus eval forward at 32,000."""
import sys, time, json, wave
import numpy as np, torch
sys.path.insert(0, "/work/research/issue16/ref")
from aasist_model import Model
torch.set_num_threads(1)
cfg = dict(first_conv=128, filts=[70, [1, 32], [32, 32], [32, 24], [24, 24]], gat_dims=[24, 32],
           pool_ratios=[0.4, 0.5, 0.7, 0.5], temperatures=[2.0, 2.0, 100.0, 100.0])
m = Model(cfg)
sd = torch.load("/work/shared/weights/aasist/AASIST-L.pth", map_location="cpu")
print("load_state_dict:", m.load_state_dict(sd), "params", sum(p.numel() for p in m.parameters()))
m.eval()
W = "/work/shared/weights/aasist"
with wave.open(f"{W}/reference/espeak_16k.wav") as w:
    x = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768
with torch.no_grad():
    lg = m(torch.from_numpy(x[:64600])[None]).numpy()[0]
ref = json.load(open(f"{W}/reference/logits.json"))["AASIST-L"]["espeak_16k.wav"]["logits"]
print("torch vs reference logits max|d|", float(np.abs(lg - np.array(ref)).max()))
with torch.no_grad():
    for L in (64600, 32000):
        xx = torch.randn(1, L) * 0.1; m(xx); t = time.perf_counter(); m(xx); print(f"eval forward 1x{L}: {(time.perf_counter()-t)*1000:.0f} ms")
m.train()
opt = torch.optim.Adam(m.parameters(), lr=1e-5)
for L in (64600, 32000):
    xb = torch.randn(8, L) * 0.1; yb = torch.randint(0, 2, (8,))
    ts = []
    for _ in range(2):
        t = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(m(xb), yb); opt.zero_grad(); loss.backward(); opt.step()
        ts.append(time.perf_counter() - t)
    print(f"train step batch 8 x {L}: {min(ts):.2f} s ({min(ts)/8*1000:.0f} ms/sample)")
