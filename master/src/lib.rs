//! The piwheels master: the tasks that follow PyPI, queue and record builds, receive files and
//! write the index, and the process that supervises them.
