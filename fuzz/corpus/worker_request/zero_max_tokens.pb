
r1acmetiny"x