
r1acmetiny"x0Bs0Bs1Bs2Bs3Bs4Bs5Bs6Bs7Bs8Bs9Bs10Bs11Bs12Bs13Bs14Bs15Bs16Bs17Bs18Bs19