
r1acmetiny"x0šjunk 