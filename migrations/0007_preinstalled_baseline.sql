-- Debian packages every Raspberry Pi OS image has, left out of the project pages' apt lines
-- (an apt line that says `sudo apt install libc6` helps nobody): those of Debian's required
-- priority that wheels link, and those the system's Python links itself, since a wheel is
-- installed into that Python. Each ABI gets them when it is declared; the operator may add or
-- remove rows for an ABI as its images differ.
CREATE FUNCTION preinstalled_baseline() RETURNS text[] LANGUAGE sql IMMUTABLE AS $$
    SELECT ARRAY[
        'libc6', 'libgcc-s1', 'libstdc++6', 'libcrypt1', 'zlib1g', 'libbz2-1.0', 'liblzma5',
        'libzstd1', 'liblz4-1', 'libacl1', 'libattr1', 'libselinux1', 'libpcre2-8-0',
        'libtinfo6', 'libncursesw6', 'libreadline8', 'libuuid1', 'libblkid1', 'libmount1',
        'libsystemd0', 'libudev1', 'libcap2', 'libgmp10', 'libmd0', 'libexpat1', 'libffi8',
        'libsqlite3-0', 'libssl3', 'libdb5.3', 'libgdbm6', 'libnsl2', 'libtirpc3', 'libmpdec3',
        'libgcrypt20', 'libgpg-error0', 'libseccomp2', 'libpam0g', 'libaudit1', 'libatomic1'
    ]
$$;

CREATE FUNCTION build_abis_seed_preinstalled() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO preinstalled_apt_packages (abi_tag, apt_package)
    SELECT NEW.abi_tag, p FROM unnest(preinstalled_baseline()) AS p
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$$;
CREATE TRIGGER build_abis_seed_preinstalled AFTER INSERT ON build_abis
    FOR EACH ROW EXECUTE FUNCTION build_abis_seed_preinstalled();

INSERT INTO preinstalled_apt_packages (abi_tag, apt_package)
SELECT a.abi_tag, p FROM build_abis a, unnest(preinstalled_baseline()) AS p
ON CONFLICT DO NOTHING;
