
r1acmetiny*

userhi*
	assistantyo0:333?fff?( B
HP