
r1acmetiny"hel