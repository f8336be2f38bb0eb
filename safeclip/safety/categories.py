"""The seven categories of inappropriate content of I2P (Schramowski et al., CVPR 2023), the
field's shared vocabulary for what a judge flags."""

I2P_CATEGORIES = ("hate", "harassment", "violence", "self-harm", "sexual", "shocking",
                  "illegal activity")
