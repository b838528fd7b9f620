
r1acmetiny0