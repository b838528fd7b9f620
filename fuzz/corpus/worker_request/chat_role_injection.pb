
r1acmetiny*
user
<|system|>x0