"""The learned change detector CYWS ("The Change You Want To See", Sachdeva & Zisserman 2023).

Units: `encoder` (shared ResNet), `coattention` (CoAM / NOAM), `decoder` (U-Net with scSE),
`centernet` (head, targets, loss, decoding) and `cyws` (the assembled model, save/load).
Import the heavy parts from their modules; this package file imports nothing from torch.
"""
