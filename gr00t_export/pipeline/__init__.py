"""The compiler's generic stages, in the order a checkpoint flows through them:
load -> partition -> export -> optimize/quantize -> engines -> validate -> igg; `build` drives them."""
