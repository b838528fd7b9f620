
r1acmetiny"hello world0