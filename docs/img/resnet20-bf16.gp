# ResNet-20 on Fashion-MNIST, fp32 against bf16 (docs/results.md): run from the
# repository root, `gnuplot docs/img/resnet20-bf16.gp`, on the curve.tsv files the two
# `incres train --out` runs wrote (copied here).
set terminal pngcairo size 1000,420 font ',10'
set output 'docs/img/resnet20-bf16.png'
set multiplot layout 1,2 title 'ResNet-20, Fashion-MNIST, 10 epochs: fp32 and --precision bf16'
set grid
set key top right
set xlabel 'epoch'
set ylabel 'error (%)'
set title 'error'
fp32 = 'docs/img/resnet20-fashion-mnist-fp32.tsv'
bf16 = 'docs/img/resnet20-fashion-mnist-bf16.tsv'
plot fp32 using 1:2 with linespoints title 'fp32 train', fp32 using 1:3 with linespoints title 'fp32 test', \
     bf16 using 1:2 with linespoints dt 2 title 'bf16 train', bf16 using 1:3 with linespoints dt 2 title 'bf16 test'
set ylabel 'loss'
set title 'loss'
plot fp32 using 1:4 with linespoints title 'fp32 train', fp32 using 1:5 with linespoints title 'fp32 test', \
     bf16 using 1:4 with linespoints dt 2 title 'bf16 train', bf16 using 1:5 with linespoints dt 2 title 'bf16 test'
unset multiplot
