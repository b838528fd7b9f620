
r1acmetiny"x0ÿÿÿÿ