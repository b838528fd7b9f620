
r1acmetiny"</s><s></s>0