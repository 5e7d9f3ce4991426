"""vmnet: networks for QEMU/KVM virtual machines (taps on Linux bridges).

Kept empty of imports on purpose: the ifup script and the libvirt hook import
submodules directly and must not pay for anything they do not use.
"""

__version__ = "0.2.0"
