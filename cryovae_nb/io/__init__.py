"""Reading and writing cryo-EM data: MRC particle stacks and volumes, RELION STAR files.

Everything here is headless numpy/pandas; images are read lazily through memory maps.
"""
from cryovae_nb.io.mrc import (MRCHeader, ParticleStack, StackWriter, open_stack, read_header,
                               read_volume, write_stack, write_volume)
from cryovae_nb.io.star import (SOURCE_INDEX, CTFParams, Particles, Poses, file_sha256, make_image_names,
                                read_output_files, read_output_record, read_particles, source_record,
                                write_particles_star, write_particles_subset)

__all__ = [
    "ParticleStack", "open_stack", "read_header", "MRCHeader", "read_volume", "write_volume",
    "write_stack", "StackWriter", "Particles", "CTFParams", "Poses", "read_particles",
    "write_particles_star", "write_particles_subset", "make_image_names", "read_output_files",
    "read_output_record", "SOURCE_INDEX", "file_sha256", "source_record",
]
