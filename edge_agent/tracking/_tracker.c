/* Placeholder until the tracker lands (issue 3). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

static struct PyModuleDef tracker_module = {
    PyModuleDef_HEAD_INIT, "_tracker", "IOU/Kalman tracker (not built yet).", 0, NULL,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__tracker(void) { return PyModuleDef_Init(&tracker_module); }
