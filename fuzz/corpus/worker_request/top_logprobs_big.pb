
r1acmetiny"x0HP