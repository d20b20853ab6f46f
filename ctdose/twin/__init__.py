"""Digital twin of the CT4Harmonization liver phantom: the toolkit's default, offline data.

What it is: a physics simulation of a phantom *like* the real one (an analytic torso with a
textured liver holding six ROIs of four classes, lungs, ribs, a vertebra and test inserts), scanned
by 13 simulated scanner profiles named as the collection's, at the collection's five doses, and
written exactly as the collection is (TCIA series names, DICOM CT Image Storage, DICOM SEG with the
six ROIs) plus a ground-truth JSON. What it is not: the real phantom, real scanners or vendor
reconstructions; the model behind each scanner code, the kernels and the IR / DL algorithms are
documented approximations (see the modules).

Modules: ``phantom`` (geometry, tissues, texture, voxelisation with a rigid pose), ``scanners``
(profiles), ``projector`` (parallel-beam projection / FBP), ``acquisition`` (photon statistics and
exact dose thinning), ``recon`` (FBP, IR and DL approximations), ``presets``, ``generate`` (calibration,
simulation, DICOM output). Entry points: :func:`ctdose.twin.generate.generate_twin` and, for the
noise-free phantom in memory, :func:`ctdose.twin.phantom.build_phantom`.
"""
