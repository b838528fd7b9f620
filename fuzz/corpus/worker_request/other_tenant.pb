
r2globextiny"x0