"""Digital twin of the CT4Harmonization-Multicentric phantom collection: the toolkit's default, offline data.

What it is: a physics simulation of a phantom *like* the real one (a human-scale torso in three
segments: thoracic, a textured liver holding six ROIs of four classes, test patterns), scanned by the
collection's 13 scanners (identities and acquisition parameters from the dataset paper's Tables 1
and 2) at its five doses, every (scanner, dose, repetition) an independent acquisition, reconstructed
with FBP, IR and DL where the collection has them, and written exactly as the collection is (TCIA
series names, DICOM CT Image Storage, DICOM SEG with the six ROIs) plus a ground-truth JSON.
What it is not: the real phantom, real scanners or vendor reconstructions; the kernels, noise levels,
CT-number calibration and IR / DL algorithms are the twin's documented choices
(``ctdose/data/twin_scanner_choices.csv``).

Modules: ``phantom`` (geometry, tissues, texture, voxelisation with a rigid pose), ``scanners``
(profiles), ``projector`` (parallel-beam projection / FBP, targeted regions), ``acquisition`` (photon
statistics), ``imaging`` (one acquisition: signal through the kernel's MTF, noise through counts and
FBP), ``recon`` (IR and DL approximations), ``presets``, ``generate`` (calibration, simulation, DICOM
output). Entry points: :func:`ctdose.twin.generate.generate_twin` and, for the noise-free phantom in
memory, :func:`ctdose.twin.phantom.build_phantom`.
"""
